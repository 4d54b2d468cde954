"""serve/app.py: a real Serve app on local Ray hosting zoo models, called over real HTTP with the
`openai` client (and httpx for the malformed requests no client would send)."""
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from cluster.config import ConfigError, load_config
from cluster.runtime import free_port
from serve.config import ServeConfig

KEY = "test-key"
# prompt limit: the probe suite's longest conversation fits (the toy models have 512 positions)
LIMITS = {"max_prompt_tokens": 448, "max_tokens": 24, "max_body_bytes": 16384, "max_concurrent_requests": 32}
HI = [{"role": "user", "content": "what is the weather like?"}]




def _make_adapter(base_dir, out_dir) -> str:
    """A tiny random LoRA adapter of llama-a (non-zero B, so it changes the output)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="module")
def app(ray_local, zoo, tmp_path_factory):
    import torch

    from serve.deploy import shutdown, start_app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    adapter = _make_adapter(zoo.zoo_dir / "llama-a", tmp_path_factory.mktemp("adapter") / "persona")
    cfg = ServeConfig.model_validate({
        "kind": "serve", "registry": [str(zoo.registry_path)], "port": free_port(), "api_key": KEY,
        "storage": {"uri": str(tmp_path_factory.mktemp("store"))},
        "limits": LIMITS,
        "candidates": [
            # a generous wait so 8 concurrent clients reliably land in one batch on a busy 2-core box
            {"id": "llama-a", "model": "llama-a", "lora_adapters": {"persona": adapter}, "max_batch_size": 8,
             "batch_wait_timeout_s": 0.3},
            {"id": "exaone4-c", "model": "exaone4-c", "max_batch_size": 4},
        ]})
    url = start_app(cfg)
    yield url
    shutdown()
    torch.set_num_threads(threads)


@pytest.fixture
def client(app):
    return openai.OpenAI(base_url=app + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _post(app, body, key=KEY, path="/v1/chat/completions", raw=None):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        return httpx.post(app + path, content=raw, headers={**headers, "content-type": "application/json"}, timeout=60)
    return httpx.post(app + path, json=body, headers=headers, timeout=60)


def _error(resp) -> dict:
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_models_lists_candidates_and_adapters(client):
    assert [m.id for m in client.models.list()] == ["llama-a", "llama-a:persona", "exaone4-c"]


def test_chat_non_streaming_counts_tokens(client):
    r = client.chat.completions.create(model="exaone4-c", messages=HI, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == "exaone4-c"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 1 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_equals_non_streaming_when_greedy(client):
    kwargs = dict(model="llama-a", messages=HI, max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert len(chunks) > 3  # it really streamed, token by token


def test_completions_plain_and_streaming(client):
    r = client.completions.create(model="exaone4-c", prompt="The school", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="exaone4-c", prompt="The school", max_tokens=6, temperature=0, stream=True))
    assert streamed == r.choices[0].text


def test_chat_template_kwargs_reach_the_template(client):
    def rendered(**tkw):
        r = client.chat.completions.create(model="llama-a", messages=HI, max_tokens=2,
                                           extra_body={"chat_template_kwargs": tkw, "yard_debug": True})
        return r.model_extra["yard_debug"]["prompt"]

    assert rendered(enable_thinking=True).endswith("<|im_start|>assistant\n<think>\n")
    off = rendered(enable_thinking=False)
    assert "<think>" not in off and off.endswith("<|im_start|>assistant\n")


def test_lora_adapter_is_its_own_model(client):
    kwargs = dict(messages=HI, max_tokens=12, temperature=0)
    base = client.chat.completions.create(model="llama-a", **kwargs)
    tuned = client.chat.completions.create(model="llama-a:persona", **kwargs)
    assert tuned.model == "llama-a:persona"
    assert tuned.choices[0].message.content != base.choices[0].message.content


def test_api_key_required(app, client):
    bad = openai.OpenAI(base_url=app + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    resp = _post(app, {"model": "llama-a", "messages": HI}, key=None)
    assert resp.status_code == 401 and _error(resp)["code"] == "invalid_api_key"


def test_limits_answer_4xx(app, client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="llama-a", messages=HI, max_tokens=LIMITS["max_tokens"] + 1)
    assert exc.value.body["param"] == "max_tokens"
    long = [{"role": "user", "content": "rain " * 600}]  # under the body limit, over the token limit
    resp = _post(app, {"model": "llama-a", "messages": long})
    assert resp.status_code == 400 and _error(resp)["code"] == "context_length_exceeded"
    resp = _post(app, {"model": "llama-a", "messages": [{"role": "user", "content": "x" * 20000}]})
    assert resp.status_code == 413 and _error(resp)["code"] == "request_too_large"


@pytest.mark.parametrize("body, param", [
    ({"model": "llama-a", "messages": HI, "temperature": 5}, "temperature"),
    ({"model": "llama-a", "messages": "hi"}, "messages"),
    ({"model": "llama-a", "messages": HI, "n": 2}, "n"),
    ({"messages": HI}, "model"),
])
def test_bad_fields_name_the_field(app, body, param):
    resp = _post(app, body)
    assert resp.status_code == 400 and _error(resp)["param"] == param


def test_unknown_model_404(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert "llama-a" in str(exc.value)  # the message names what is served


def test_malformed_json_400(app):
    resp = _post(app, None, raw=b'{"model": "llama-a", "messages": [')
    assert resp.status_code == 400 and _error(resp)["code"] == "invalid_json"
    resp = _post(app, None, raw=json.dumps([1, 2]).encode())
    assert resp.status_code == 400


@pytest.mark.parametrize("body, param", [
    # a request must not bring its own Jinja: it would run in the replica, holding the tokenizer
    ({"model": "llama-a", "messages": HI, "chat_template_kwargs": {"chat_template": "{% for i in range(9) %}x"
                                                                                     "{% endfor %}"}},
     "chat_template_kwargs"),
    ({"model": "llama-a", "messages": HI, "chat_template_kwargs": {"enable_thinking": {"nested": 1}}},
     "chat_template_kwargs"),
    ({"model": "llama-a", "messages": HI, "seed": 18446744073709551616}, "seed"),  # 2**64: raised in generate
    ({"model": "llama-a", "messages": HI, "seed": -1}, "seed"),
    ({"model": "llama-a", "messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
])
def test_hostile_fields_are_refused_before_any_work(app, body, param):
    resp = _post(app, body)
    assert resp.status_code == 400 and _error(resp)["param"] == param, resp.text


def test_deep_json_and_wrong_content_type_are_4xx(app):
    deep = b'{"model": "llama-a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    resp = _post(app, None, raw=deep)
    assert resp.status_code == 400 and "nested" in _error(resp)["message"]
    resp = _post(app, None, raw=b'{"model": "llama-a", "x": ' + b"[" * 40 + b"]" * 40 + b"}")
    assert resp.status_code == 400 and "nested" in _error(resp)["message"]
    resp = httpx.post(app + "/v1/chat/completions", content=json.dumps({"model": "llama-a", "messages": HI}),
                      headers={"authorization": f"Bearer {KEY}", "content-type": "text/plain"}, timeout=60)
    assert resp.status_code == 415 and _error(resp)["code"] == "unsupported_media_type"
    ok = _post(app, {"model": "llama-a", "messages": HI, "max_tokens": 2, "seed": 7})
    assert ok.status_code == 200  # and the app answers normally afterwards


def test_without_a_key_other_origins_are_refused():
    # public hosts without a key are refused by start_app: tests/serve/test_deploy.py
    from serve.requests import BadRequest, check_origin

    with pytest.raises(BadRequest) as exc:
        check_origin(None, "https://evil.example")  # a web page in the user's browser, no key set
    assert exc.value.status == 403 and exc.value.code == "forbidden_origin"
    for fine in (None, "http://localhost:3000", "http://127.0.0.1:8000", "http://[::1]:8000"):
        check_origin(None, fine)
    check_origin("a-key", "https://evil.example")  # with a key, the key decides


def test_concurrent_requests_are_batched_and_replica_survives(app, client):
    from serve.deploy import candidate_info

    before = candidate_info("llama-a")

    def ask(i):
        r = client.chat.completions.create(model="llama-a", messages=[{"role": "user", "content": f"day {i}?"}],
                                           max_tokens=8, extra_body={"yard_debug": True})
        return r.model_extra["yard_debug"]["batch_size"]

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(ask, range(8)))
    assert max(sizes) > 1
    after = candidate_info("llama-a")
    assert max(after["batch_sizes"]) > 1
    # all the refused requests of this module left the same replica serving
    assert after["replica_id"] == before["replica_id"]
    assert httpx.get(app + "/health").json() == {"status": "ok"}


def test_config_rejects_duplicate_ids_and_missing_source(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("kind: serve\ncandidates:\n  - {id: a, model: x}\n  - {id: a, model: y}\n")
    with pytest.raises(ConfigError, match="served twice"):
        load_config(path, ServeConfig)
    path.write_text("kind: serve\ncandidates:\n  - {id: a}\n")
    with pytest.raises(ConfigError, match="candidates.0: .*exactly one of model"):
        load_config(path, ServeConfig)


def test_demo_config_is_valid():
    cfg = load_config("configs/serve.demo.yaml", ServeConfig)
    assert cfg.host == "127.0.0.1" and [c.id for c in cfg.candidates] == ["llama-a", "qwen3-b"]


def test_probe_route_runs_the_suite_through_the_app(app):
    """POST /v1/yard/probe: the configured persona suite against one served model, with and without
    the system prompt, through the app's own API (rule checks; the judge rubric is `yard probe`'s)."""
    resp = _post(app, {"model": "exaone4-c", "max_tokens": 16}, path="/v1/yard/probe")
    assert resp.status_code == 200, resp.text
    summary = resp.json()
    (cand,) = summary["candidates"]
    assert cand["error"] is None and set(cand["conditions"]) == {"with_system", "without_system"}
    for cond in cand["conditions"].values():
        assert cond["probes"] > 10 and 0.0 <= cond["pass_rate"] <= 1.0 and "claims_ai" in cond["rules"]
    assert summary["report"] and summary["report"].endswith(".md") and summary["cached"] is False
    # the same call again: answered from the first run, nothing generated or published twice
    again = _post(app, {"model": "exaone4-c", "max_tokens": 16}, path="/v1/yard/probe").json()
    assert again["cached"] is True and again["report"] == summary["report"]
    assert _post(app, {"model": "nope"}, path="/v1/yard/probe").status_code == 404
    assert _post(app, {"model": "exaone4-c"}, key="wrong", path="/v1/yard/probe").status_code == 401


def test_a_chunked_body_is_cut_off_at_the_limit(app):
    """No Content-Length (chunked transfer): the ingress stops reading at the limit and answers 413."""
    def chunks():
        yield b'{"model": "llama-a", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 1024
        yield b'"}]}'

    resp = httpx.post(app + "/v1/chat/completions", content=chunks(), timeout=60,
                      headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert resp.status_code == 413 and _error(resp)["code"] == "request_too_large"


def test_one_failing_request_fails_alone_not_its_batch():
    """The batch fallback on its own (a request that passes validation yet breaks generate cannot be
    made on demand with a real model): the batch fails, each request is retried alone, and only the
    bad one answers 500."""
    from serve.app import isolate_failures

    calls = []

    def run(batch):
        calls.append(len(batch))
        if any(r["bad"] for r in batch):
            raise RuntimeError("overflow in sampling")
        return [{"text": str(r["i"])} for r in batch]

    out = isolate_failures(run, [{"i": i, "bad": i == 2} for i in range(4)], "t")
    assert [o.get("text") for o in out] == ["0", "1", None, "3"]
    assert out[2]["error"][0] == 500 and "overflow in sampling" in out[2]["error"][1]
    assert calls == [4, 1, 1, 1, 1]
