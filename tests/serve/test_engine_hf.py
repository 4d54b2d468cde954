"""serve/engine_hf.py without a model: where a candidate's weights are found (an HF dir, its
model/ folder, a store prefix downloaded once), the request side's template errors, and refusals
before any weight is read. Generation itself runs on the toy zoo in test_app.py / test_serve_job.py."""
import threading
from pathlib import Path

import pytest

from cluster.config import UserError
from cluster.models.loading import LoadError
from cluster.models.registry import ModelSpec
from cluster.store.storage_local import LocalStore
from serve.config import CandidateConfig
from serve.engine_hf import GenRequest, GenResult, HFEngine, PromptSide, RequestError, candidate_source, resolve_model_dir


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("YARD_HF_CACHE", str(cache))
    return cache


def model_dir(path, marker="config.json"):
    path.mkdir(parents=True)
    (path / marker).write_text("{}")
    (path / "model.safetensors").write_bytes(b"\0" * 64)
    return path


def test_an_hf_dir_or_its_model_folder_is_used_in_place(tmp_path):
    direct = model_dir(tmp_path / "direct")
    nested = model_dir(tmp_path / "run" / "model")
    assert resolve_model_dir(str(direct)) == str(direct)
    assert resolve_model_dir(str(tmp_path / "run")) == str(nested)
    adapter = model_dir(tmp_path / "adapter", marker="adapter_config.json")
    assert resolve_model_dir(str(adapter), marker="adapter_config.json") == str(adapter)


def test_a_local_path_without_the_marker_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (str(tmp_path / "empty"), "./nowhere", "~/nowhere-at-all"):
        with pytest.raises(LoadError, match=r"^path .*: no config.json there or in its model/ folder$"):
            resolve_model_dir(path)


def test_a_store_prefix_is_downloaded_once_into_the_cache(tmp_path, hf_cache):
    store = LocalStore(tmp_path / "store")
    run = store.new_run("candidate", "demo.t1")
    run.put_dir("model", model_dir(tmp_path / "src"))
    run.complete()
    local = resolve_model_dir(f"{run.prefix}/", store.uri)
    assert local.startswith(str(hf_cache / "yard-serve")) and local.endswith(f"{run.prefix}/model")
    assert sorted(p.name for p in (hf_cache / "yard-serve").rglob("*") if p.is_file()) == [
        ".complete", "config.json", "model.safetensors"]
    store.put_bytes(f"{run.prefix}/model/config.json", b'{"changed": true}')
    assert resolve_model_dir(run.prefix, store.uri) == local
    assert Path(local, "config.json").read_text() == "{}"  # downloaded once: the cached copy is kept


def test_a_store_prefix_without_the_marker_names_the_store(tmp_path, hf_cache):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(LoadError, match=r"^path candidate/none: no config.json under .*store/candidate/none or its "
                                        r"model/ folder$"):
        resolve_model_dir("candidate/none", store.uri)


def test_a_path_candidate_gets_a_registry_entry_of_its_own(tmp_path):
    src = model_dir(tmp_path / "m")
    spec, local, facts = candidate_source(CandidateConfig(id="m", path=str(src)), None, ".yard", None)
    assert local == str(src) and facts == {}
    assert spec.source == str(src.resolve()) and spec.source_kind == "local" and spec.params_b > 0


def test_a_registry_model_without_a_registry_is_refused_before_loading():
    cand = CandidateConfig(id="a", model="llama-a")
    with pytest.raises(LoadError, match=r"^candidate a: model 'llama-a' needs a registry$"):
        candidate_source(cand, None, ".yard", None)
    with pytest.raises(LoadError, match=r"^candidate a: model 'llama-a' needs a registry$"):
        HFEngine(cand)


class FakeTokenizer:
    chat_template = "{{ messages }}"

    def __init__(self, fail=None):
        self.fail, self.calls = fail, []

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kwargs):
        if self.fail:
            raise self.fail
        self.calls.append(kwargs)
        return "|".join(m["content"] for m in messages)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [0] * len(text.split()) + ([1] if add_special_tokens else [])}


def prompt_side(tokenizer, **cand) -> PromptSide:
    side = PromptSide()
    side.candidate = CandidateConfig(**{"id": "a", "path": "/m", **cand})
    side.spec = ModelSpec(source="org/m", params_b=1, chat_template_kwargs={"enable_thinking": True, "x": 1})
    side.tokenizer, side._tok_lock = tokenizer, threading.Lock()
    return side


def test_template_options_registry_then_candidate_then_request():
    tok = FakeTokenizer()
    side = prompt_side(tok, chat_template_kwargs={"enable_thinking": False, "y": 2},
                       lora_adapters={"kr": "/ad"})
    assert side.render_chat([{"role": "user", "content": "hi"}], {"y": 3}) == "hi"
    assert tok.calls == [{"enable_thinking": False, "x": 1, "y": 3}]
    assert side.model_ids() == ["a", "a:kr"]
    assert side.count_tokens("one two three") == 3 and side.count_tokens("one", add_special_tokens=True) == 2


def test_a_template_that_raises_is_the_requests_fault_in_one_line():
    side = prompt_side(FakeTokenizer(fail=ValueError("Conversation roles must alternate\nmore detail")))
    with pytest.raises(RequestError) as e:
        side.render_chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert str(e.value) == "messages: the chat template rejected them (Conversation roles must alternate)"
    assert issubclass(RequestError, UserError)


def test_a_tokenizer_without_a_template_is_a_load_error_not_the_requests():
    tok = FakeTokenizer()
    tok.chat_template = None
    with pytest.raises(LoadError, match=r"model a: tokenizer has no chat template"):
        prompt_side(tok).render_chat([{"role": "user", "content": "hi"}])


def test_requests_default_to_sampling_and_results_are_plain_dicts():
    req = GenRequest("prompt")
    assert (req.max_tokens, req.temperature, req.top_p, req.stop, req.adapter, req.add_special_tokens) == (
        64, 1.0, 1.0, [], None, False)
    assert GenResult("hi", 3, 1, "stop", 2).to_dict() == {"text": "hi", "prompt_tokens": 3, "completion_tokens": 1,
                                                        "finish_reason": "stop", "batch_size": 2}
