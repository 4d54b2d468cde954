"""The KoMT-style judge benchmark inside a sweep's evaluation. The judge is a ReplayServer (a real
OpenAI-compatible HTTP server replaying recorded judgments): a real judge model cannot run on this
CPU machine. The candidate is a real zoo model answering both turns."""
from pathlib import Path

import pytest

from cluster.config import ConfigError
from serve.replay import ReplayServer
from tune.evaluate import EvalConfig, evaluate, load_benchmarks

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KOMT = Path(__file__).resolve().parents[2] / "configs" / "komt_sample.jsonl"


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
