import copy
import json
from pathlib import Path

import pytest
import torch

import actors.generation
from actors.generation import GenerationResult
from cluster.config import ConfigError, validate
from tune.compress.prune import remove_layers
from tune.eval.datasets import BenchmarkSchemaError
from tune.eval.evaluate import BenchmarkSpec, EvalConfig, EvalResult, evaluate, load_benchmarks, mcq_prompt, qa_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

REPO = Path(__file__).resolve().parents[3]
ZOO_QA, ZOO_MCQ = str(REPO / "configs/bench/zoo_qa.jsonl"), str(REPO / "configs/bench/zoo_mcq.jsonl")
KOMT = str(REPO / "configs/komt_sample.jsonl")
OWN = ["weather", "food"]  # what llama-a was trained on


@pytest.fixture(scope="module")
def llama(zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = zoo.zoo_dir / "llama-a"
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def own_cfg():
    return EvalConfig(benchmarks=[
        BenchmarkSpec(name="qa", task="qa", source=ZOO_QA, categories=OWN, limit=24),
        BenchmarkSpec(name="mcq_ll", task="mcq", source=ZOO_MCQ, categories=OWN, limit=24, mode="loglikelihood"),
        BenchmarkSpec(name="mcq_gen", task="mcq", source=ZOO_MCQ, categories=OWN, limit=8, max_new_tokens=16),
    ])


@pytest.fixture(scope="module")
def own_benchmarks(own_cfg):
    return load_benchmarks(own_cfg)


@pytest.fixture(scope="module")
def base_result(llama, own_benchmarks, own_cfg):
    progress = []
    result = evaluate(*llama, own_benchmarks, own_cfg, model_id="llama-a",
                      on_progress=lambda *a: progress.append(a))
    return result, progress


@pytest.fixture(scope="module")
def pruned_result(llama, own_benchmarks, own_cfg):
    model = remove_layers(copy.deepcopy(llama[0]), [3, 4, 5])
    return evaluate(model, llama[1], own_benchmarks, own_cfg, model_id="llama-a-pruned")


def test_perf_in_unit_range_and_speed_positive(base_result):
    result, progress = base_result
    assert set(result.perf) == {"qa", "mcq_ll", "mcq_gen"}
    assert all(0.0 <= v <= 1.0 for v in result.perf.values())
    assert result.perf_mean == pytest.approx(sum(result.perf.values()) / 3)
    assert result.generated_tokens > 0 and result.sec_per_token > 0
    assert result.sec_per_token == pytest.approx(result.generation_seconds / result.generated_tokens, rel=1e-3)
    # loglikelihood generates nothing: the tokens are the generate-mode benchmarks' alone
    details = result.details
    assert "generated_tokens" not in details["mcq_ll"]
    assert result.generated_tokens == details["qa"]["generated_tokens"] + details["mcq_gen"]["generated_tokens"]
    assert details["qa"]["n"] == 24 and set(details["qa"]["by_category"]) == set(OWN)
    assert len(details["qa"]["samples"]) == 3 and details["qa"]["samples"][0]["prediction"]
    assert ("qa", 24, 24) in progress and ("mcq_gen", 8, 8) in progress
    again = EvalResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result


def test_base_beats_its_3_layer_pruned_copy_on_own_topics(base_result, pruned_result):
    base = base_result[0]
    assert base.perf["qa"] > 0.2  # it reproduces its memorized answers
    assert base.perf["qa"] > pruned_result.perf["qa"] + 0.1
    assert base.perf_mean > pruned_result.perf_mean


def test_loglikelihood_mcq_beats_chance(base_result):
    result = base_result[0]
    assert result.perf["mcq_ll"] >= 0.75  # 4 options: chance is 0.25
    assert result.details["mcq_ll"]["parse_failure_rate"] == 0.0


def test_generated_mcq_reports_its_parse_failure_rate(base_result):
    detail = base_result[0].details["mcq_gen"]
    assert 0.0 <= detail["parse_failure_rate"] <= 1.0
    # the toy models cannot follow an MCQ instruction: they answer from memory, which no option parses
    assert detail["parse_failure_rate"] >= 0.5


def test_generated_mcq_scores_parsed_replies(llama, monkeypatch):
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="mcq", task="mcq", source=ZOO_MCQ, limit=4)])
    bench = load_benchmarks(cfg)
    items = bench[0].items
    letters = "ABCD"
    replies = [f"Answer: {letters[items[0]['solution'] - 1]}", f"정답: {items[1]['solution']}", "no idea",
               items[3]["options"][items[3]["solution"] - 1]]

    def canned(model, tokenizer, texts, gen, **kwargs):
        out = replies if len(texts) == len(replies) else ["x"] * len(texts)  # the warm-up
        return GenerationResult(list(out), [5] * len(texts), 0.01, 100.0)

    monkeypatch.setattr(actors.generation, "generate_batched", canned)
    result = evaluate(*llama, bench, cfg)
    assert result.perf["mcq"] == 0.75
    assert result.details["mcq"]["parse_failure_rate"] == 0.25
    assert result.generated_tokens == 20 and result.sec_per_token == pytest.approx(0.01 / 20)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_wrong_schema_fails_at_load_naming_file_line_and_field(tmp_path):
    good = {"question": "q?", "options": ["a", "b", "c", "d"], "solution": 2}
    path = _jsonl(tmp_path / "bench.jsonl", [good, {**good, "solution": 5}])
    # a relative source resolves against base_dir (the config's folder)
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="m", task="mcq", source="bench.jsonl")])
    with pytest.raises(BenchmarkSchemaError) as info:
        load_benchmarks(cfg, base_dir=tmp_path)
    assert str(info.value).startswith(f"{path}:2: solution:") and "\n" not in str(info.value)
    qa_cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="q", task="qa", source="bench.jsonl")])
    with pytest.raises(BenchmarkSchemaError, match=r"bench\.jsonl:1: context: missing"):
        load_benchmarks(qa_cfg, base_dir=tmp_path)


def test_filter_keeping_nothing_names_the_benchmark(tmp_path):
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="zoo_mcq", task="mcq", source=ZOO_MCQ, categories=["sports"])])
    with pytest.raises(ConfigError) as info:
        load_benchmarks(cfg)
    msg = str(info.value)
    assert "benchmarks.zoo_mcq.categories" in msg and "weather" in msg and "\n" not in msg


def test_filters_and_hash(tmp_path):
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="a", task="mcq", source=ZOO_MCQ, categories=["home"], limit=5),
                                 BenchmarkSpec(name="b", task="mcq", source=ZOO_MCQ, categories=["home"], limit=6)])
    a, b = load_benchmarks(cfg)
    assert len(a.items) == 5 and all(i["category"] == "home" for i in a.items)
    assert b.items[:5] == a.items and a.sha256 != b.sha256


@pytest.mark.parametrize("benchmarks,expected", [
    ([{"name": "q", "task": "qa", "source": "x.jsonl", "mode": "loglikelihood"}], "mode: loglikelihood"),
    ([{"name": "m", "task": "mcq", "source": "x.jsonl"}, {"name": "m", "task": "qa", "source": "y.jsonl"}],
     "duplicate name 'm'"),
    ([{"name": "m", "task": "mcq", "source": "x.jsonl", "mode": "loglikelihood"}], "mode generate"),
    ([{"name": "m", "task": "mcq", "source": "x.jsonl", "limit": 0}], "benchmarks.0.limit"),
    ([{"name": "m", "task": "essay", "source": "x.jsonl"}], "benchmarks.0.task"),
    ([{"name": "bad name", "task": "qa", "source": "x.jsonl"}], "benchmarks.0.name"),
    ([], "benchmarks"),
])
def test_config_errors_are_one_line_naming_the_field(benchmarks, expected):
    with pytest.raises(ConfigError) as info:
        validate({"benchmarks": benchmarks}, EvalConfig, "sweep.yaml")
    msg = str(info.value)
    assert msg.startswith("sweep.yaml: ") and expected in msg and "\n" not in msg


def test_prompts_put_the_question_last_in_the_items_language():
    en = mcq_prompt({"question": "Why is the sky blue?", "options": ["Rayleigh", "Dust"], "solution": 1})
    assert "A. Rayleigh\nB. Dust" in en and "Answer: B" in en
    ko = mcq_prompt({"question": "김치의 주재료는?", "options": ["배추", "감자"], "solution": 1})
    assert "A. 배추" in ko and "정답" in ko
    qa = qa_prompt({"context": "The Han River flows through Seoul.", "question": "Where does it flow?",
                    "answers": []})
    assert qa.endswith("Question: Where does it flow?") and "unanswerable" in qa
    assert "알 수 없음" in qa_prompt({"context": "한강은 서울을 흐른다.", "question": "어디를 흐르나?", "answers": []})


def test_eval_result_from_dict_names_a_missing_field():
    with pytest.raises(ValueError, match="sec_per_token: missing"):
        EvalResult.from_dict({"perf": {}, "perf_mean": 0.0, "generated_tokens": 1, "generation_seconds": 1.0,
                              "details": {}})


class _VllmStandIn:
    """Stands in for `cluster.engines.engine_vllm.VllmModel`, which needs vLLM and a CUDA GPU (the real one
    evaluates on the GPU machine: BENCHMARKS.md, "The sweep on vLLM"). Same contract: token-id
    prompts in, all of a benchmark in one call, greedy; answered here by the HF model."""

    engine = "vllm"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.calls = model, tokenizer, []

    def generate(self, prompt_ids, *, max_new_tokens, min_new_tokens=0, **_):
        from cluster.engines.engine_vllm import VllmOutput

        self.calls.append(len(prompt_ids))
        texts, counts = [], []
        for ids in prompt_ids:
            with torch.inference_mode():
                out = self.model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                          min_new_tokens=min_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
            new = out[0, len(ids):].tolist()
            texts.append(self.tokenizer.decode(new, skip_special_tokens=True).strip())
            counts.append(len(new))
        return VllmOutput(texts, counts, 0.5)


def test_a_vllm_model_gets_every_prompt_of_a_benchmark_in_one_call(llama):
    cfg = EvalConfig(engine="vllm", max_new_tokens=6, benchmarks=[
        BenchmarkSpec(name="qa", task="qa", source=ZOO_QA, categories=OWN, limit=5),
        BenchmarkSpec(name="mcq", task="mcq", source=ZOO_MCQ, categories=OWN, limit=3, max_new_tokens=4)])
    engine = _VllmStandIn(*llama)
    result = evaluate(engine, llama[1], load_benchmarks(cfg), cfg, model_id="cand")
    assert engine.calls == [1, 5, 3]  # the untimed warm-up, then one call per benchmark
    assert set(result.perf) == {"qa", "mcq"} and all(0 <= v <= 1 for v in result.perf.values())
    # the engine's own generate seconds over its generated tokens (warm-up excluded)
    assert result.generation_seconds == 1.0 and result.sec_per_token == pytest.approx(1.0 / result.generated_tokens)


def test_loglikelihood_needs_the_transformers_model(llama):
    with pytest.raises(ValueError, match="'mcq_ll': mode loglikelihood needs engine hf"):
        EvalConfig(engine="vllm", benchmarks=[BenchmarkSpec(name="qa", task="qa", source=ZOO_QA),
                                              BenchmarkSpec(name="mcq_ll", task="mcq", source=ZOO_MCQ,
                                                            mode="loglikelihood")])
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="qa", task="qa", source=ZOO_QA, limit=1),
                                 BenchmarkSpec(name="ll", task="mcq", source=ZOO_MCQ, limit=1, mode="loglikelihood")])
    with pytest.raises(ValueError, match="benchmark ll: mode loglikelihood needs the transformers model"):
        evaluate(_VllmStandIn(*llama), llama[1], load_benchmarks(cfg), cfg)
