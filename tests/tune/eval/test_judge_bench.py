"""The KoMT-style judge benchmark inside a sweep's evaluation. The judge is a ReplayServer (a real
OpenAI-compatible HTTP server replaying recorded judgments): a real judge model cannot run on this
CPU machine. The candidate is a real zoo model answering both turns."""
from pathlib import Path

import pytest

from cluster.config import ConfigError
from serve.judge.replay import ReplayServer
from tune.eval.evaluate import EvalConfig, EvalResult, evaluate, load_benchmarks
from tune.eval.judge_bench import aligned_perf

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KOMT = Path(__file__).resolve().parents[3] / "configs" / "komt_sample.jsonl"


def _cfg(judge: dict, **extra):
    return EvalConfig.model_validate({"max_new_tokens": 12, "benchmarks": [
        {"name": "komt", "task": "judge", "source": str(KOMT), "limit": 2, "judge": judge, **extra}]})


@pytest.fixture(scope="module")
def llama(zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = zoo.zoo_dir / "llama-a"
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_judge_benchmark_scores_both_turns_and_counts_unparseable(llama):
    model, tok = llama
    # 2 questions x 2 turns = 4 judgments: ratings 8, 6, 9 and one judgment without a rating
    recordings = [{"match": None, "status": 200, "content": c, "times": 1}
                  for c in ("Good. Rating: [[8]]", "Fine. [[6]]", "I cannot decide.", "Great [[9]]")]
    with ReplayServer(recordings, default=None) as judge:
        cfg = _cfg({"base_url": judge.url, "model": "judge-x"})
        result = evaluate(model, tok, load_benchmarks(cfg), cfg, model_id="llama-a")
        asked = len(judge.chat_requests)
    detail = result.details["komt"]
    assert asked == 4 and detail["judgments"] == 4 and detail["ok"] == 3 and detail["unparseable"] == 1
    assert result.perf["komt"] == pytest.approx((8 + 6 + 9) / 3 / 10)  # unparseable left out, not scored 0
    per_item = detail["per_item"]  # "<question_id>:<turn>" -> score, None when not rated
    assert len(per_item) == 4 and all(k.endswith((":1", ":2")) for k in per_item)
    assert sorted(v for v in per_item.values() if v is not None) == [6, 8, 9] and None in per_item.values()
    assert detail["generated_tokens"] > 0 and result.sec_per_token > 0  # its generation is timed


def test_judge_benchmark_with_the_replay_judge(llama):
    model, tok = llama
    cfg = _cfg({"replay": True})
    result = evaluate(model, tok, load_benchmarks(cfg), cfg, model_id="llama-a")
    assert 0.1 <= result.perf["komt"] <= 1.0 and result.details["komt"]["replayed_judge"] is True


def test_judge_benchmark_bad_config():
    with pytest.raises(ValueError, match="a judge endpoint goes with task judge"):
        EvalConfig.model_validate({"benchmarks": [{"name": "q", "task": "qa", "source": "x.jsonl",
                                                   "judge": {"replay": True}}]})
    with pytest.raises(ValueError, match="a judge endpoint goes with task judge"):
        _cfg(None)
    with pytest.raises(ConfigError, match="benchmarks.komt.judge: .*base_url and model are required"):
        load_benchmarks(_cfg({"model": "m"}))


def _result(perf: dict, per_item: dict | None = None) -> EvalResult:
    details = {name: {"task": "qa"} for name in perf}
    if per_item is not None:
        details["komt"] = {"task": "judge", "per_item": per_item}
    return EvalResult(perf=perf, perf_mean=sum(perf.values()) / len(perf), generated_tokens=10,
                      generation_seconds=1.0, sec_per_token=0.1, details=details)


def test_aligned_perf_compares_both_models_on_the_turns_rated_for_both():
    # the candidate's judgment of q2:1 did not parse; the baseline's of q3:1 did not
    cand = _result({"qa": 0.5, "komt": (4 + 8) / 2 / 10}, {"q1:1": 4, "q2:1": None, "q3:1": 8})
    base = _result({"qa": 0.7, "komt": (6 + 2) / 2 / 10}, {"q1:1": 6, "q2:1": 2, "q3:1": None})
    perf, base_perf, left_out = aligned_perf(cand, base)
    assert left_out == {"komt": 2}  # q2 and q3 are out for both
    assert perf == pytest.approx((0.5 + 0.4) / 2) and base_perf == pytest.approx((0.7 + 0.6) / 2)
    # unaligned, the baseline's low q2 (2/10), never rated for the candidate, would have flattered the candidate
    assert (cand.perf_mean, base.perf_mean) != pytest.approx((perf, base_perf))


def test_aligned_perf_leaves_other_benchmarks_and_unrated_results_alone():
    cand, base = _result({"qa": 0.5, "mcq": 0.25}), _result({"qa": 0.75, "mcq": 0.5})
    assert aligned_perf(cand, base) == (cand.perf_mean, base.perf_mean, {})
    # no turn rated for both: nothing to align on, each keeps its own mean (logged)
    cand = _result({"komt": 0.4}, {"q1:1": 4, "q2:1": None})
    base = _result({"komt": 0.2}, {"q1:1": None, "q2:1": 2})
    assert aligned_perf(cand, base) == (pytest.approx(0.4), pytest.approx(0.2), {})
