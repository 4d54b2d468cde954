"""The KoMT-style judge end to end over real HTTP.

Both the judge and the candidates are ReplayServers: a real judge model (GPT-4 class) cannot run
on this CPU machine, so the judge replays recorded judgments (well-formed, malformed, 429s), and
the candidates replay recorded answers (the Serve app is tested in test_app.py; `yard demo`
connects the two). Everything between them (prompts, HTTP, retries, cache, parsing, scoring,
reports in the store) is the real code."""
import json

import pytest

from cluster.config import ConfigError, load_config
from cluster.store.storage import open_store
from serve.client import ChatClient, ResponseCache
from serve.judge.judge import (AnswerConfig, CandidateEndpoint, JudgeConfig, hangul_ratio, is_korean, judge_candidates,
                         main)
from serve.judge.judge_prompts import Question
from serve.judge.replay import ReplayServer

KO_Q = Question("k1", "writing", ("서울의 봄에 대해 짧은 글을 써 주세요.", "그 글을 두 문장으로 줄여 주세요."))
MATH_Q = Question("m1", "math", ("What is 6 times 7?", "And divided by 2?"), ("42", "21"))
ANSWERS = [
    {"match": "서울의 봄에 대해", "content": "서울의 봄은 벚꽃과 함께 찾아옵니다. 한강 공원에 사람들이 모입니다."},
    {"match": "두 문장으로", "content": "Spring in Seoul brings cherry blossoms. People gather by the river."},
    {"match": "6 times 7", "content": "6 times 7 is 42."},
    {"match": "divided by 2", "content": "42 divided by 2 is 21."},
]


def test_language_check_is_offline_and_documented():
    assert is_korean("서울의 봄은 벚꽃과 함께 찾아옵니다.") and not is_korean("Spring in Seoul brings cherry blossoms.")
    assert is_korean("42") and hangul_ratio("42") is None  # too few letters to tell: never penalised
    assert is_korean("파이썬 함수입니다:\n```python\ndef even_squares(xs): return xs\n```")  # code is left out


def _judge(judge_url, cache=None, **kw):
    return ChatClient(judge_url, "replay-judge", backoff_s=0.01, cache=cache, **kw)


def test_single_mode_scores_penalty_unparseable_and_reports(tmp_path):
    judgments = [  # turn-2 prompts hold the whole conversation, so their matches come first
        {"match": "Spring in Seoul brings", "content": "Fine. Rating: [[4]]"},
        {"match": "42 divided by 2 is 21", "content": "Correct [8]"},
        {"match": "서울의 봄은 벚꽃과", "content": "Lovely. Rating: [[9]]"},
        {"match": "6 times 7 is 42", "status": 429, "retry_after": 0.05, "times": 1},
        {"match": "6 times 7 is 42", "content": "I cannot decide."},  # malformed: counted, not scored 0
    ]
    store = open_store(str(tmp_path / "store"))
    with ReplayServer(ANSWERS, default=None) as cand, ReplayServer(judgments, default=None) as judge:
        result = judge_candidates([CandidateEndpoint(id="cand-a", base_url=cand.url, model="a")], _judge(judge.url),
                                  [KO_Q, MATH_Q], language_penalty=True, store=store, name="t",
                                  answer=AnswerConfig(temperature=0.0))
    s = result.summary["cand-a"]
    # turn 1: KO 9 and math unparseable; turn 2: English answer to a Korean question -> sqrt(4) = 2, math 8.
    assert s["turn_1"] == 9.0 and s["turn_2"] == 5.0 and s["overall"] == pytest.approx((9 + 2 + 8) / 3, abs=1e-4)
    assert (s["n_scored"], s["n_unparseable"], s["n_penalized"], s["n_judge_failed"]) == (3, 1, 1, 0)
    assert s["categories"]["math"]["turn_2"] == 8.0 and s["categories"]["math"]["turn_1"] is None
    # turn 2's candidate request carried the turn-1 answer
    turn2 = [r for r in cand.chat_requests if r["messages"][-1]["content"] == KO_Q.turns[1]][0]
    assert turn2["messages"][1] == {"role": "assistant", "content": ANSWERS[0]["content"]}
    report = (tmp_path / "store" / result.run_prefix / "report.md").read_text(encoding="utf-8")
    assert "| cand-a | 9.00 | 5.00 | 6.33 | 3/4 | 1 | 0 | 0 | 1 |" in report and "no parseable rating" in report
    assert (tmp_path / "store" / result.run_prefix / "chart-cand-a.png").read_bytes()[:4] == b"\x89PNG"
    assert store.latest("judge", "t", prefer=("results.json",)).key.endswith("results.json")


def test_rerun_with_cache_makes_no_judge_requests(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    cands = [CandidateEndpoint(id="a", base_url="http://x/v1", model="a")]
    with ReplayServer(ANSWERS) as cand, ReplayServer() as judge:
        cands[0] = cands[0].model_copy(update={"base_url": cand.url})
        first = judge_candidates(cands, _judge(judge.url, cache), [KO_Q, MATH_Q])
        n_first = len(judge.requests)
        second = judge_candidates(cands, _judge(judge.url, cache), [KO_Q, MATH_Q])
    assert n_first == 4 and len(judge.requests) == n_first  # the rerun asked the judge nothing
    assert first.summary == second.summary and second.judge_requests == 0


def test_rerun_asks_the_judge_again_only_for_unparseable_judgments(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    cands = [CandidateEndpoint(id="a", base_url="http://x/v1", model="a")]
    # both math turns (turn 2's prompt repeats turn 1's answer); the Korean ones get the default [[k]]
    malformed = [{"match": "6 times 7 is 42", "content": "I cannot decide."}]
    with ReplayServer(ANSWERS) as cand, ReplayServer(malformed) as judge:
        cands[0] = cands[0].model_copy(update={"base_url": cand.url})
        first = judge_candidates(cands, _judge(judge.url, cache), [KO_Q, MATH_Q])
        second = judge_candidates(cands, _judge(judge.url, cache), [KO_Q, MATH_Q])
        asked_again = [r["messages"][-1]["content"] for r in judge.chat_requests[4:]]
    assert first.judge_requests == 4 and first.summary["a"]["n_unparseable"] == 2
    assert second.judge_requests == 2 and all("6 times 7 is 42" in m for m in asked_again)
    assert second.summary == first.summary and len(cache) == 2  # the unparseable judgments were never stored


def test_pairwise_rerun_asks_again_for_an_unparseable_verdict(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    qs = [Question("p1", "writing", ("Write a slogan.",))]
    judgments = [{"match": "<|Assistant A|>\nXSLOGAN", "content": "[[A]]"},
                 {"match": "<|Assistant A|>\nYSLOGAN", "content": "both are fine"}]
    with ReplayServer([{"match": "slogan", "content": "XSLOGAN"}]) as cx, \
            ReplayServer([{"match": "slogan", "content": "YSLOGAN"}]) as cy, ReplayServer(judgments) as j:
        cands = [CandidateEndpoint(id="x", base_url=cx.url, model="x"),
                 CandidateEndpoint(id="y", base_url=cy.url, model="y")]
        first = judge_candidates(cands, _judge(j.url, cache), qs, mode="pairwise")
        second = judge_candidates(cands, _judge(j.url, cache), qs, mode="pairwise")
    assert first.records[0]["status"] == "unparseable" and (first.judge_requests, second.judge_requests) == (2, 1)


def test_pairwise_judges_both_orders_and_a_disagreement_is_a_tie():
    qs = [Question("p1", "writing", ("Write a slogan.",)), Question("p2", "stem", ("Explain rain.",))]
    answers_x = [{"match": "slogan", "content": "XSLOGAN"}, {"match": "rain", "content": "XRAIN"}]
    answers_y = [{"match": "slogan", "content": "YSLOGAN"}, {"match": "rain", "content": "YRAIN"}]
    judgments = [
        # slogan: X wins in both orders (consistent)
        {"match": "<|Assistant A|>\nXSLOGAN", "content": "[[A]]"},
        {"match": "<|Assistant A|>\nYSLOGAN", "content": "[[B]]"},
        # rain: the judge always prefers whatever is shown first (position bias) -> tie
        {"match": "RAIN", "content": "[[A]]"},
    ]
    with ReplayServer(answers_x) as cx, ReplayServer(answers_y) as cy, ReplayServer(judgments, default=None) as j:
        cands = [CandidateEndpoint(id="x", base_url=cx.url, model="x"), CandidateEndpoint(id="y", base_url=cy.url, model="y")]
        result = judge_candidates(cands, _judge(j.url), qs, mode="pairwise")
        firsts = [r["messages"][-1]["content"].split("<|Assistant A|>\n")[1][:7] for r in j.chat_requests]
    assert sorted(firsts) == ["XRAIN\n<", "XSLOGAN", "YRAIN\n<", "YSLOGAN"]  # both orders were asked
    x, y = result.summary["x"], result.summary["y"]
    assert (x["wins"], x["losses"], x["ties"], x["n_inconsistent"]) == (1, 0, 1, 1)
    assert (y["wins"], y["losses"], y["ties"]) == (0, 1, 1) and x["win_rate"] == 0.75
    rain = [r for r in result.records if r["question_id"] == "p2"][0]
    assert rain["status"] == "inconsistent" and rain["winner"] == "tie" and rain["verdicts"] == ["A", "A"]


def _write_config(tmp_path, **overrides):
    cfg = {"kind": "judge", "name": "cli", "storage": {"uri": str(tmp_path / "store")},
           "questions": "configs/komt_sample.jsonl", "limit": 2,
           "candidates": [{"id": "a", "base_url": "http://127.0.0.1:9/v1", "model": "a"}],
           "judge": {"replay": True, "backoff_s": 0.01}, "cache_dir": str(tmp_path / "cache")}
    cfg.update(overrides)
    path = tmp_path / "judge.yaml"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def test_cli_main_runs_with_the_replay_judge(tmp_path, capsys):
    with ReplayServer(default="echo") as cand:
        path = _write_config(tmp_path, candidates=[{"id": "a", "base_url": cand.url, "model": "a"}])
        code = main([str(path)])
    out = capsys.readouterr().out
    assert code == 0 and "judge requests: 4" in out and "report.md" in out
    report = open(out.split("report: ")[1].strip(), encoding="utf-8").read()
    assert "Replayed judge" in report
    # it called endpoints and started nothing: no ledger rows, and its cost line says so, last
    store = open_store(str(tmp_path / "store"))
    assert [k for k in store.list_keys("jobs/") if k.endswith("/ledger.jsonl")] == []
    last = [ln for ln in report.splitlines() if ln.strip()][-1]
    assert last.startswith("Cost: no GPU time on this cluster (") and "starts none" in last


def test_cli_reports_missing_judgments_with_exit_1(tmp_path, capsys):
    with ReplayServer(default="echo") as cand, ReplayServer([{"match": None, "status": 400, "content": "bad"}]) as j:
        path = _write_config(tmp_path, candidates=[{"id": "a", "base_url": cand.url, "model": "a"}],
                             judge={"base_url": j.url, "model": "jm", "backoff_s": 0.01})
        code = main([str(path)])
    assert code == 1 and "failed 4" in capsys.readouterr().out


def test_cli_exits_1_when_no_judgment_parsed(tmp_path, capsys):
    with ReplayServer(default="echo") as cand, ReplayServer([{"match": None, "content": "I cannot decide."}]) as j:
        path = _write_config(tmp_path, candidates=[{"id": "a", "base_url": cand.url, "model": "a"}],
                             judge={"base_url": j.url, "model": "jm", "backoff_s": 0.01})
        code = main([str(path)])
        rerun = main([str(path)])
        asked = len(j.chat_requests)
    out = capsys.readouterr().out
    assert code == 1 and rerun == 1 and "unparseable 4" in out and "failed 0" in out
    assert asked == 8  # nothing unparseable was cached: the rerun asked all 4 again
    store = open_store(str(tmp_path / "store"))
    manifest = store.get_json(f"{store.runs('jobs', 'judge')[-1].prefix}/manifest.json")
    assert manifest["status"] == "failed" and manifest["message"].startswith("no judgment parsed: all 4 unparseable")


@pytest.mark.parametrize("change, match", [
    ({"candidates": [{"id": "a", "base_url": "http://h/v1", "model": "a"}] * 2}, "candidate id 'a' is used twice"),
    ({"mode": "pairwise"}, "pairwise mode needs at least 2 candidates"),
    ({"mode": "best-of"}, r"mode: 'best-of': not allowed \(allowed: 'single' or 'pairwise'\)"),
    ({"candidates": [{"id": "a", "base_url": "localhost:8000", "model": "a"}]}, r"candidates\.0\.base_url: .*http\(s\) URL"),
    ({"judge": {"base_url": "http://h/v1", "model": "j", "api_key_env": "sk-123"}}, r"judge\.api_key_env: .*variable name"),
    ({"judge": {"replay": False}}, "judge: .*base_url and model are required unless replay: true"),
    ({"judge": {"replay": True, "max_concurrency": 0}}, r"judge\.max_concurrency: 0: .*\(allowed: ge 1\)"),
    ({"candidates": []}, "candidates: .*at least 1"),
    ({"answers": {}}, r"answers: .*\(unknown field\)"),
])
def test_judge_config_bad_input_is_one_line(tmp_path, change, match):
    path = _write_config(tmp_path, **change)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path, JudgeConfig)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_demo_config_is_valid():
    cfg = load_config("configs/judge.demo.yaml", JudgeConfig)
    assert cfg.judge.replay and cfg.language_penalty and len(cfg.candidates) == 2
