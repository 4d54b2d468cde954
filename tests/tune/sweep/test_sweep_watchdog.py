"""Hung and overlong sweep trials are acted on: killed, rerun once when they stalled, kept as errors
when they ran past the time limit; the leaderboard and `yard status` say so."""
import os
import signal
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from cluster.store.storage_local import LocalStore
from tests.tune.sweep.test_sweep import DEMO, _cfg

pytestmark = pytest.mark.slow


STALL_AFTER_S = 5  # a few seconds: the trials heartbeat per step, and loading has its own limit


def make_trial(stopped: Path):
    """The real trial, except: prune_depth 1 stops for good (SIGSTOP, never resumed: a wedged
    step) once it is pruning, on its first attempt; prune_depth 2 stays alive and heartbeats but
    never finishes (a trial far slower than its recipe should be)."""
    from tune.sweep.trial import run_trial

    def trial(config, setup):
        from ray import tune

        from cluster.store.storage import open_store
        from tune.sweep.trial import trial_reporter

        if config["prune_depth"] == 1 and not stopped.exists():
            trial_reporter(open_store(setup.store_uri, setup.endpoint_url), setup.job_id,
                           tune.get_context().get_trial_id(), STALL_AFTER_S).phase("prune")
            stopped.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)
        if config["prune_depth"] == 2:
            reporter = trial_reporter(open_store(setup.store_uri, setup.endpoint_url), setup.job_id,
                                      tune.get_context().get_trial_id(), 30.0)
            reporter.phase("evaluate")
            step = 0
            while True:
                step += 1
                reporter.heartbeat(step=step)
                time.sleep(1.0)
        return run_trial(config, setup)

    return trial


@pytest.mark.timeout(420)
def test_a_stalled_trial_is_rerun_and_an_overlong_one_killed(ray_local, zoo, tmp_path):
    from cluster.ops.status import collect
    from tune.sweep.sweep import run_sweep

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    stopped = tmp_path / "stopped"
    # trial_time_limit_s 30: the stalled trial's rerun took 4 s alone on 2 cores, the overlong trial
    # sleeps until the limit, and the test waits for it (50 s before: 20 s of a worker's time idle)
    cfg = _cfg(zoo, tmp_path, "name=watch", "register_top=0", "calibration.count=8", "calibration.holdout=2",
               "search.space.prune_depth={grid: [1, 2]}", "search.space.kd_samples={value: 0}",
               "search.space.lora_rank={value: 0}", "search.space.quant={value: none}",
               "search.max_concurrent_trials=2", "search.asha.enabled=false", "eval.max_new_tokens=8",
               "eval.benchmarks.0.limit=4", "eval.benchmarks.1.limit=4", "timing.enabled=false",
               f"stall_after_s={STALL_AFTER_S}", "search.trial_time_limit_s=30", "search.stall_retries=1")
    started = time.time()
    code, summary = run_sweep(cfg, config_path=str(DEMO), trial_fn=make_trial(stopped))
    assert stopped.exists()  # the first attempt really stopped
    assert time.time() - started < 300  # acted on, not waited out
    assert code == 1 and summary["ok"] == 1 and summary["errors"] == 1
    by_kind = {i["kind"]: i for i in summary["incidents"]}
    assert sorted(by_kind) == ["stalled", "time limit"], summary["incidents"]
    stall, over = by_kind["stalled"], by_kind["time limit"]
    assert stall["retried"] and stall["phase"] == "prune" and stall["heartbeat_age_s"] >= STALL_AFTER_S
    assert not over["retried"] and over["phase"] == "evaluate"
    store = LocalStore(str(tmp_path / "store"))
    run = store.runs("sweep", "watch")[-1]
    rows = {r["prune_depth"]: r for r in store.get_json(f"{run.prefix}/rows.json")}
    assert rows[1]["status"] == "ok" and rows[1]["trial_id"] == stall["trial_id"]  # the rerun finished
    assert rows[2]["status"] == "error" and "trial_time_limit_s=30" in rows[2]["error"]
    md = (tmp_path / "store" / run.prefix / "leaderboard.md").read_text()
    assert "## Trials the sweep killed" in md
    assert f"| {stall['trial_id']} | stalled | prune |" in md and f"| {over['trial_id']} | time limit |" in md
    (job,) = [j for j in collect(store) if j.job_name == "sweep"]
    tasks = {t.task: t for t in job.tasks}
    killed = tasks[f"trial-{stall['trial_id']}.killed1"]
    assert killed.status == "FAILED" and "stalled" in killed.message
    assert tasks[f"trial-{stall['trial_id']}"].status == "SUCCEEDED"  # the rerun's own record
    assert tasks[f"trial-{over['trial_id']}"].status == "FAILED"
    assert "trial_time_limit_s" in tasks[f"trial-{over['trial_id']}"].message


def test_a_killed_trial_keeps_the_kill_reason_over_its_last_heartbeat(zoo, tmp_path):
    """`ray.kill` returns before the trial's process is gone: a heartbeat it writes meanwhile sets its
    record back to running. When Tune then reports the trial's error, the record ends with the
    kill's reason, not a generic one (a CI run once showed a FAILED trial with no message)."""
    from types import SimpleNamespace

    from cluster.ops.progress import progress_key, read_task
    from tune.sweep.trial import trial_task
    from tune.sweep.watchdog import trial_watchdog

    store = LocalStore(str(tmp_path / "store"))
    reason = "trial t2 ran 51s, past search.trial_time_limit_s=50 while evaluate; killed"
    incidents = [{"trial_id": "t2", "kind": "time limit", "phase": "evaluate", "retried": False, "reason": reason}]
    watchdog = trial_watchdog(store, "j1", _cfg(zoo, tmp_path), incidents)
    for tid in ("t1", "t2"):  # t1 errored on its own; t2's last heartbeat came after the kill
        store.put_state(progress_key("j1", trial_task(tid)), {"job_id": "j1", "task": trial_task(tid),
                                                              "status": "running", "phase": "evaluate"})
        watchdog.on_trial_error(0, [], SimpleNamespace(trial_id=tid))
    assert read_task(store, "j1", trial_task("t2"))["message"] == reason
    t1 = read_task(store, "j1", trial_task("t1"))
    assert t1["status"] == "failed" and t1["message"].startswith("the trial errored")
