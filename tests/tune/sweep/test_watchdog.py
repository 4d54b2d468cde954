"""tune/sweep/watchdog.py: what the rows and the leaderboard say about trials the sweep killed. The
callback killing real stalled and overlong trials on Ray Tune: test_sweep_watchdog.py."""
import tune.sweep.trial  # noqa: F401
from tune.sweep.watchdog import incidents_markdown, killed_reasons

JOB = "sweep-20261130-000000-abcdef"


def test_killed_reasons_explain_only_errored_killed_trials():
    rows = [{"trial_id": "a", "status": "error", "error": "actor died"},
            {"trial_id": "b", "status": "ok", "error": None},
            {"trial_id": "c", "status": "error", "error": "OOM"}]
    incidents = [{"trial_id": "a", "reason": "first kill"}, {"trial_id": "a", "reason": "second kill"},
                 {"trial_id": "b", "reason": "killed, then rerun fine"}]
    out = killed_reasons(rows, incidents)
    assert [r["error"] for r in out] == ["second kill", None, "OOM"]
    assert rows[0]["error"] == "actor died"  # the input rows are left as they were


def test_incidents_markdown_is_a_table_or_nothing():
    assert incidents_markdown([]) == ""
    md = incidents_markdown([
        {"trial_id": "t1", "kind": "stalled", "phase": "starting", "heartbeat_age_s": 31.5, "limit_s": 30.0,
         "retried": True},
        {"trial_id": "t2", "kind": "time limit", "phase": "evaluate", "heartbeat_age_s": None, "limit_s": 75.0,
         "retried": False},
    ])
    lines = md.splitlines()
    assert lines[1] == "## Trials the sweep killed"
    assert lines[-2:] == ["| t1 | stalled | starting | 31.5 | 30 | yes |",
                          "| t2 | time limit | evaluate | - | 75 | no |"]
    assert md.endswith("\n")
