"""serve/judge/judge_report.py: per-candidate summaries of judge records (single and pairwise), the
markdown report and the PNG charts, from hand-written records. The judging itself: test_judge.py."""
import pytest

from serve.judge.judge_report import (REPLAY_WARNING, candidate_chart, comparison_chart, markdown_report,
                                summarize_pairwise, summarize_single)

PNG = b"\x89PNG\r\n\x1a\n"


def _single(cid, qid, category, turn, status="ok", score=None, penalized=False) -> dict:
    return {"candidate": cid, "question_id": qid, "category": category, "turn": turn, "status": status,
            "score": score, "penalized": penalized}


SINGLE = [
    _single("a", "w1", "writing", 1, score=9.0),
    _single("a", "w1", "writing", 2, score=2.0, penalized=True),      # sqrt(4): an English answer
    _single("a", "m1", "math", 1, "unparseable"),
    _single("a", "m1", "math", 2, score=8.0),
    _single("a", "r1", "reasoning", 1, "judge_failed"),
    _single("a", "r1", "reasoning", 2, "no_answer"),
    _single("b", "w1", "writing", 1, score=6.0),
    _single("b", "w1", "writing", 2, score=7.0),
]


def _pair(qid, category, a, b, winner, status="ok") -> dict:
    return {"question_id": qid, "category": category, "a": a, "b": b, "winner": winner, "status": status}


PAIRWISE = [
    _pair("p1", "writing", "x", "y", "x"),
    _pair("p2", "writing", "x", "y", "tie", "inconsistent"),     # the orders disagreed: a tie
    _pair("p3", "math", "x", "y", "y"),
    _pair("p4", "math", "x", "y", None, "unparseable"),          # undecided: out of the win rate
    _pair("p5", "stem", "x", "y", None, "judge_failed"),
]


def test_single_means_leave_out_what_was_not_scored():
    s = summarize_single(SINGLE, ["a", "b"])["a"]
    assert (s["turn_1"], s["turn_2"]) == (9.0, 5.0)
    assert s["overall"] == pytest.approx(19 / 3, abs=1e-4)
    assert (s["n_judgments"], s["n_scored"], s["n_unparseable"], s["n_judge_failed"], s["n_no_answer"],
            s["n_penalized"]) == (6, 3, 1, 1, 1, 1)
    assert list(s["categories"]) == ["math", "reasoning", "writing"]
    assert s["categories"]["math"] == {"turn_1": None, "turn_2": 8.0, "overall": 8.0, "n": 1}
    # a category with no scored judgment stays in the table with empty means
    assert s["categories"]["reasoning"] == {"turn_1": None, "turn_2": None, "overall": None, "n": 0}


def test_single_candidate_without_records_has_empty_means():
    s = summarize_single(SINGLE, ["a", "nobody"])["nobody"]
    assert (s["turn_1"], s["turn_2"], s["overall"]) == (None, None, None)
    assert (s["n_judgments"], s["n_scored"], s["categories"]) == (0, 0, {})


def test_pairwise_ties_count_half_and_undecided_ones_not_at_all():
    summary = summarize_pairwise(PAIRWISE, ["x", "y"])
    x, y = summary["x"], summary["y"]
    assert (x["wins"], x["losses"], x["ties"], x["win_rate"]) == (1, 1, 1, 0.5)
    assert (y["wins"], y["losses"], y["ties"], y["win_rate"]) == (1, 1, 1, 0.5)
    assert (x["n_judgments"], x["n_inconsistent"], x["n_unparseable"], x["n_judge_failed"]) == (5, 1, 1, 1)
    assert x["categories"]["writing"] == {"wins": 1, "losses": 0, "ties": 1, "win_rate": 0.75}
    assert x["categories"]["math"] == {"wins": 0, "losses": 1, "ties": 0, "win_rate": 0.0}
    # only a failed judgment: no decided pair, no rate
    assert x["categories"]["stem"] == {"wins": 0, "losses": 0, "ties": 0, "win_rate": None}


def _report(summary, mode="single", **kw):
    args = dict(mode=mode, name="demo", questions_path="q.jsonl", n_questions=3, judge_model="judge-m",
                replayed=False, language_penalty=True, charts={})
    return markdown_report(summary, **{**args, **kw})


def test_single_report_tables_and_unparseable_note():
    summary = summarize_single(SINGLE, ["a", "b"])
    report = _report(summary, charts={"a": "chart-a.png", "comparison": "comparison.png"})
    lines = report.splitlines()
    assert lines[0] == "# Judge report: demo"
    assert "- mode: single; questions: q.jsonl (3); judge: judge-m" in lines
    assert "- KoMT non-Korean penalty (score -> sqrt(score)): on" in lines
    assert "| a | 9.00 | 5.00 | 6.33 | 3/6 | 1 | 1 | 1 | 1 |" in lines
    assert "| b | 6.00 | 7.00 | 6.50 | 2/2 | 0 | 0 | 0 | 0 |" in lines
    assert "| reasoning | - | - | - | 0 |" in lines                  # no mean is shown as "-"
    assert "![comparison](comparison.png)" in lines and "![a](chart-a.png)" in lines
    assert "![b]" not in report                                       # no chart given, none linked
    assert report.count("no parseable rating") == 1                   # a's note; b parsed everything
    assert REPLAY_WARNING not in report and report.endswith("|\n")


def test_pairwise_report_and_the_replay_warning():
    report = _report(summarize_pairwise(PAIRWISE, ["x", "y"]), mode="pairwise", replayed=True,
                     language_penalty=False)
    lines = report.splitlines()
    assert REPLAY_WARNING in lines and "- KoMT non-Korean penalty (score -> sqrt(score)): off" in lines
    assert "| x | 0.50 | 1 | 1 | 1 | 1 | 1 | 1 |" in lines
    assert "| writing | 0.75 | 1 | 0 | 1 |" in lines and "| stem | - | 0 | 0 | 0 |" in lines


@pytest.mark.parametrize("mode", ["single", "pairwise"])
def test_charts_are_png_even_with_empty_means(mode, tmp_path):
    summary = summarize_single(SINGLE, ["a", "b", "nobody"]) if mode == "single" else \
        summarize_pairwise(PAIRWISE, ["x", "y"])
    first = next(iter(summary))
    for name, png in [("one.png", candidate_chart(first, summary[first], mode, replayed=True)),
                      ("all.png", comparison_chart(summary, mode, replayed=False))]:
        (tmp_path / name).write_bytes(png)
        assert (tmp_path / name).read_bytes()[:8] == PNG and len(png) > 1000
    empty = summary["nobody"] if mode == "single" else summarize_pairwise([], ["z"])["z"]
    assert candidate_chart("empty", empty, mode, replayed=False)[:8] == PNG   # no categories at all
