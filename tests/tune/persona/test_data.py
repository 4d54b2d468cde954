import importlib.util
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tune.persona.data import (
    PrepConfig, PrepError, percentile, prepare, recommend_max_length, render_conversation, token_length,
    write_prep_report,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

DEMO_DIR = Path(__file__).resolve().parents[3] / "configs" / "persona" / "seoyun"
NO_THINK = {"enable_thinking": False}


class CharTokenizer:
    """One token per character of the ChatML rendering: enough for the validation tests."""

    model_max_length = 10**30  # what tokenizers without a limit report

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False, **kwargs):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        if add_generation_prompt:
            text += "<|im_start|>assistant\n" + ("<think>\n" if kwargs.get("enable_thinking") else "")
        return text

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": list(range(len(text)))}


def _msgs(*pairs):
    out = []
    for q, a in pairs:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


GOOD = {"messages": _msgs(("안녕하세요", "어서 오세요!"))}
GOOD_DPO = {"prompt": [{"role": "user", "content": "AI예요?"}], "chosen": [{"role": "assistant", "content": "아니요!"}],
            "rejected": [{"role": "assistant", "content": "네, 저는 AI입니다."}]}


def _write(dir_: Path, name: str, lines) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    path = dir_ / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                    encoding="utf-8")
    return path


def _prep(dir_, **kw):
    return prepare(PrepConfig(data_dir=str(dir_), **kw), CharTokenizer())


@pytest.mark.parametrize("bad_line,reason", [
    ('{"messages": [{"role": "user", "content": "hi"}', "malformed JSON"),
    ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]}, "messages[0]: missing role"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
     "messages[1]: empty assistant turn"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages[0]: expected a user turn"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "user", "content": "c"}]}, "last turn must be assistant"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "unknown role 'robot'"),
    ({**GOOD_DPO, "rejected": GOOD_DPO["chosen"]}, "chosen equals rejected"),
    ({**GOOD_DPO, "chosen": [{"role": "user", "content": "x"}]}, "chosen: must be exactly one assistant message"),
    ({**GOOD_DPO, "prompt": _msgs(("q", "a"))}, "prompt: last turn must be user"),
    ({"text": "free text"}, "unknown schema"),
    ("[1, 2]", "not a JSON object"),
])
def test_each_bad_line_is_reported_with_file_and_line(tmp_path, bad_line, reason):
    _write(tmp_path, "a.jsonl", [GOOD, GOOD_DPO, bad_line, ""])
    result = _prep(tmp_path)
    assert len(result.bad) == 1
    assert (result.bad[0]["file"], result.bad[0]["line"]) == ("a.jsonl", 3)
    assert reason in result.bad[0]["reason"]
    assert len(result.sft) == 1 and len(result.dpo) == 1  # the good rows survive, the blank line is no row


def test_duplicates_counted_including_whitespace_and_system_only_differences(tmp_path):
    spaced = {"messages": _msgs(("안녕하세요 ", "어서 오세요!"))}
    with_system = {"messages": [{"role": "system", "content": "너는 한서윤이야."}] + GOOD["messages"]}
    _write(tmp_path, "a.jsonl", [GOOD, GOOD, spaced, with_system, GOOD_DPO])
    _write(tmp_path, "b.jsonl", [GOOD_DPO])  # across files too
    result = _prep(tmp_path)
    assert result.duplicates == 4
    assert len(result.sft) == 1 and len(result.dpo) == 1
    assert _prep(tmp_path, dedupe=False).duplicates == 0


def test_system_messages_stripped_and_counted(tmp_path):
    sys_msg = {"role": "system", "content": "너는 한서윤이야."}
    _write(tmp_path, "a.jsonl", [{"messages": [sys_msg] + _msgs(("a", "b"))},
                                 {**GOOD_DPO, "prompt": [sys_msg] + GOOD_DPO["prompt"]}, GOOD])
    result = _prep(tmp_path)
    assert result.stripped_system == 2
    assert all(m["role"] != "system" for r in result.sft for m in r["messages"])
    assert result.dpo[0]["prompt"] == GOOD_DPO["prompt"]
    kept = _prep(tmp_path, strip_system=False)
    assert kept.stripped_system == 0 and kept.sft[0]["messages"][0] == sys_msg


def test_zero_valid_rows_is_one_line_prep_error(tmp_path):
    _write(tmp_path, "a.jsonl", ["{not json", GOOD_DPO])
    with pytest.raises(PrepError, match=r"^no valid rows: 0 SFT rows .*\(1 bad lines, 1 DPO rows\)") as e:
        _prep(tmp_path)
    assert "\n" not in str(e.value)


def test_missing_folder_and_empty_folder_are_prep_errors(tmp_path):
    with pytest.raises(PrepError, match="data_dir: .* is not a directory"):
        _prep(tmp_path / "nope")
    with pytest.raises(PrepError, match=r"data_dir: no \*.jsonl files"):
        _prep(tmp_path)


def test_bad_config_field_named():
    with pytest.raises(ValidationError, match="held_out_fraction"):
        PrepConfig(data_dir="x", held_out_fraction=0.7)
    with pytest.raises(ValidationError, match="extra"):
        PrepConfig(data_dir="x", strip_sytem=False)


def test_held_out_split_is_seeded_and_disjoint(tmp_path):
    rows = [{"messages": _msgs((f"q{i}", f"a{i}"))} for i in range(20)]
    _write(tmp_path, "a.jsonl", rows)
    a, b = _prep(tmp_path, held_out_fraction=0.2, seed=1), _prep(tmp_path, held_out_fraction=0.2, seed=1)
    assert len(a.sft) == 16 and len(a.sft_held_out) == 4
    assert a.sft_held_out == b.sft_held_out
    assert not {json.dumps(r) for r in a.sft} & {json.dumps(r) for r in a.sft_held_out}
    assert _prep(tmp_path, held_out_fraction=0.2, seed=2).sft_held_out != a.sft_held_out


def test_row_chat_template_kwargs_kept_and_override(tmp_path):
    row = {**GOOD, "chat_template_kwargs": {"enable_thinking": False}, "_cat": "greeting"}
    _write(tmp_path, "a.jsonl", [row])
    result = _prep(tmp_path)
    assert result.sft[0] == {"messages": GOOD["messages"], "chat_template_kwargs": {"enable_thinking": False}}


def test_percentile_and_recommendation():
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert recommend_max_length(181)[0] == 192
    assert recommend_max_length(192)[0] == 192
    assert recommend_max_length(3)[0] == 64
    length, why = recommend_max_length(700, model_max=512)
    assert length == 512 and "model_max_length 512" in why


@pytest.fixture(scope="module")
def zoo_tokenizer(zoo):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(zoo.zoo_dir / "qwen3-b")


def test_lengths_and_recommendation_on_zoo_tokenizer(zoo_tokenizer, tmp_path):
    rows = [{"messages": _msgs(("카페 이름이 뭐예요?", "느티나무 커피예요. " * n))} for n in range(1, 11)]
    _write(tmp_path, "a.jsonl", rows + [GOOD_DPO])
    result = prepare(PrepConfig(data_dir=str(tmp_path)), zoo_tokenizer, chat_template_kwargs=NO_THINK)
    direct = sorted(len(zoo_tokenizer(render_conversation(r["messages"], zoo_tokenizer, NO_THINK),
                                      add_special_tokens=False)["input_ids"]) for r in rows)
    sft = result.lengths["sft"]
    assert (sft["p50"], sft["p90"], sft["p99"], sft["max"]) == (direct[4], direct[8], direct[9], direct[9])
    assert result.lengths["dpo"]["count"] == 1
    assert result.recommended_max_length % 64 == 0 and sft["p99"] <= result.recommended_max_length < sft["p99"] + 64
    assert result.over_max_length == {"sft": 0, "dpo": 0}
    capped = prepare(PrepConfig(data_dir=str(tmp_path), max_length=16), zoo_tokenizer)
    assert capped.over_max_length["sft"] == 10


def test_report_files_written(tmp_path):
    _write(tmp_path / "data", "a.jsonl", [GOOD, "{oops", GOOD_DPO])
    files = write_prep_report(_prep(tmp_path / "data"), tmp_path / "out")
    text = files["report"].read_text(encoding="utf-8")
    assert "| a.jsonl:2 | malformed JSON" in text and "Recommended max_length: **" in text
    assert files["histogram"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_seoyun", DEMO_DIR.parent / "make_seoyun.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_generator_is_deterministic(tmp_path):
    _load_generator().main(tmp_path)
    for name in ("sft.jsonl", "dpo.jsonl"):
        assert (tmp_path / name).read_bytes() == (DEMO_DIR / name).read_bytes()


def test_shipped_demo_dataset_preps_with_expected_counts(zoo_tokenizer):
    gen = _load_generator()
    result = prepare(PrepConfig(data_dir=str(DEMO_DIR), held_out_fraction=0.1), zoo_tokenizer,
                     chat_template_kwargs=NO_THINK)
    assert len(result.bad) == gen.BAD_LINES == 7
    assert result.duplicates == gen.DUPLICATES == 7
    assert len(result.sft) + len(result.sft_held_out) == gen.N_SINGLE + gen.N_MULTI
    assert len(result.dpo) + len(result.dpo_held_out) == gen.N_DPO
    reasons = " ".join(b["reason"] for b in result.bad)
    for kind in ("malformed JSON", "missing role", "empty assistant turn", "chosen equals rejected",
                 "unknown schema"):
        assert kind in reasons
    assert result.stripped_system > 0
    assert result.lengths["sft"]["max"] <= zoo_tokenizer.model_max_length  # fits the toy models' 512 positions


@pytest.mark.parametrize("model_id", ["qwen3-b", "llama-a", "exaone4-c"])
def test_no_think_tags_in_rendered_training_text(zoo, model_id):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(zoo.zoo_dir / model_id)
    result = prepare(PrepConfig(data_dir=str(DEMO_DIR)), tok, chat_template_kwargs=NO_THINK)
    for row in result.sft:
        assert "<think>" not in render_conversation(row["messages"], tok, NO_THINK)
    for row in result.dpo:
        # trl renders a DPO prompt with the generation prompt, where thinking templates add the tag
        prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True, **NO_THINK)
        assert "<think>" not in prompt + render_conversation(row["prompt"] + row["chosen"], tok, NO_THINK)
    thinking = tok.apply_chat_template(result.dpo[0]["prompt"], tokenize=False, add_generation_prompt=True,
                                       enable_thinking=True)
    assert "<think>" in thinking  # the check above would catch a template that adds it
    assert token_length(result.sft[0], tok, NO_THINK) > 0
