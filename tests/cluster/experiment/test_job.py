"""`yard run` end to end on the session's local Ray: users' scripts and functions over a grid,
watched (progress, stalls, errors), resumed by content, and killed without losing finished work."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cluster.experiment.job import run_experiment, run_experiment_job
from cluster.store.storage import open_store
from tests.cluster.experiment.workloads import ran, write_script

pytestmark = pytest.mark.slow


def config(tmp_path, name, modes, ids, **kw):
    return {"kind": "experiment", "name": name, "command": [sys.executable, write_script(tmp_path), "{mode}", "{i}"],
            "grid": {"mode": modes, "i": ids}, "phases": {"Loading": "loading"},
            "storage": {"uri": str(tmp_path / "store")}, **kw}


def ledger(store, job_name):
    return [json.loads(line) for key in store.list_keys(f"jobs/{job_name}/") if key.endswith("/ledger.jsonl")
            for line in store.get_bytes(key).decode().splitlines()]


def test_progress_shows_in_status_while_it_runs_errors_stop_at_two_and_logs_stay_bounded(ray_local, tmp_path):
    from cluster.ops.status import collect, main as status_main

    cfg = config(tmp_path, "watch", ["tqdm", "error", "huge"], [0], log_limit_kib=64, retries=3,
                 env={"STEP_S": "0.15"})
    store = open_store(str(tmp_path / "store"))
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(rows=run_experiment(cfg)))
    thread.start()
    seen = None
    while thread.is_alive() and seen is None:  # what `yard status` shows, while the script runs
        for job in collect(store):
            for t in job.tasks:
                if t.task.startswith("0-tqdm-") and t.status == "RUNNING" and t.total == 30 and 0 < t.done < 30:
                    seen = t
        time.sleep(0.2)
    thread.join(timeout=120)
    assert seen is not None and seen.extra["log"].endswith(".log") and seen.phase == "loading"
    rows = {r["mode"]: r for r in result["rows"]}
    assert rows["tqdm"]["status"] == "ok" and rows["tqdm"]["result.i"] == 0  # the last JSON line
    # a deterministic error stops after 2 attempts (retries=3 allowed more), with its signature
    assert rows["error"]["status"] == "skipped" and rows["error"]["attempts"] == 2
    assert "same error twice: ValueError: bad checkpoint 0" in rows["error"]["reason"]
    # 2.6 MB of output: the log keeps head and tail; only $YARD_OUT reaches the store
    huge = rows["huge"]
    files = store.list_keys(huge["run"] + "/")
    assert f"{huge['run']}/out/kept.txt" in files and not [f for f in files if "outside" in f]
    log = store.get_bytes(f"{huge['run']}/log.txt").decode()
    assert len(log) < 70 * 1024 and "noise line 000000" in log and "noise line 199999" in log
    assert "bytes of output left out" in log and log.startswith("[yard: condition 0-huge-")
    report = Path(tmp_path / "status.md")
    assert status_main(["--store", str(tmp_path / "store"), "--markdown", str(report)]) == 0
    text = report.read_text()
    assert "| 0-tqdm-" in text and "30/30 (100.0%)" in text and "bad checkpoint 0" in text


def test_a_stopped_condition_is_killed_rerun_and_failed_and_a_resume_recomputes_none(ray_local, tmp_path):
    cfg = config(tmp_path, "stops", ["stop"], [0, 1, 2, 3, 4, 5], stall_after_s=3)
    t0 = time.time()
    from cluster.config import validate
    from cluster.experiment.config import ExperimentConfig

    code, rows, _ = run_experiment_job(validate(cfg, ExperimentConfig, "stops"))
    assert code == 1 and time.time() - t0 < 3 + 60
    status = {r["i"]: r for r in rows}
    assert [status[i]["status"] for i in range(6)] == ["ok", "ok", "ok", "stalled", "ok", "ok"]
    assert status[3]["attempts"] == 2 and "no output for" in status[3]["reason"]
    store = open_store(str(tmp_path / "store"))
    rows_ledger = ledger(store, "stops")
    assert sorted(r["outcome"] for r in rows_ledger) == ["kept"] * 5 + ["stalled"] * 2
    assert all(r["phases"]["run"] >= 0 and r["node_type"] == "cpu" for r in rows_ledger)
    killed = [k for k in store.list_state("progress/") if ".killed1" in k]
    assert len(killed) == 1 and status[3]["condition_id"] in killed[0]
    # --plan prices the rest from measured times; --resume reruns only the stopped one
    code, _, plan = run_experiment_job(validate(cfg, ExperimentConfig, "stops"), plan=True)
    assert code == 0 and (plan["planned"], plan["reused"]) == (1, 5)
    code, rows, summary = run_experiment_job(validate(cfg, ExperimentConfig, "stops"), resume=True)
    assert code == 1 and summary["reused"] == 5
    assert sorted(r["i"] for r in rows if r["reused"]) == [0, 1, 2, 4, 5]
    runs = ran(store, "stops")
    assert all(len(runs[r["condition_id"]]) == 1 for r in rows if r["i"] != 3)  # computed once, ever


def test_the_driver_killed_halfway_loses_nothing_finished(ray_local, tmp_path):
    """A 40-condition grid; the driver (a `yard run` process on this Ray) is SIGKILLed halfway;
    the rerun completes the grid without recomputing any finished condition."""
    import yaml

    cfg = config(tmp_path, "half", ["sleep"], list(range(40)), env={"STEP_S": "0.25"})
    path = tmp_path / "half.yaml"
    path.write_text(yaml.safe_dump(cfg))  # sorted keys: the axes listed in another order
    store = open_store(str(tmp_path / "store"))
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    yard = Path(sys.executable).parent / "yard"
    proc = subprocess.Popen([str(yard), "run", str(path)], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "driver.log", "w"), start_new_session=True)
    deadline = time.time() + 120
    while len(ran(store, "half")) < 12 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {cid: runs for cid, runs in ran(store, "half").items()}
    assert 12 <= len(before) < 40, (tmp_path / "driver.log").read_text()[-2000:]
    time.sleep(1.0)  # what was running when the driver died is not finished later by a stray worker
    rows = run_experiment(cfg)
    assert len(rows) == 40 and {r["status"] for r in rows} == {"ok"}
    after = ran(store, "half")
    for cid, runs in before.items():
        assert after[cid] == runs  # finished before the kill: reused, not run again
    assert sum(r["reused"] for r in rows) == len(before)


def test_a_function_reports_progress_and_a_silent_one_is_cancelled(ray_local, tmp_path):
    cfg = {"kind": "experiment", "name": "fn", "function": "tests.cluster.experiment.workloads:trial",
           "grid": {"x": [2, "hang"]}, "stall_after_s": 2, "stall_retries": 0,
           "storage": {"uri": str(tmp_path / "store")}}
    rows = {str(r["x"]): r for r in run_experiment(cfg)}
    ok = rows["2"]
    assert ok["status"] == "ok" and ok["x2"] == 4 and ok["env_out"] is True and "nested" not in ok
    store = open_store(str(tmp_path / "store"))
    assert store.get_bytes(f"{ok['run']}/out/note.txt") == b"x=2"
    assert "a print is output too" in store.get_bytes(f"{ok['run']}/log.txt").decode()
    hang = rows["hang"]
    assert hang["status"] == "stalled" and "no heartbeat" in hang["reason"]
    assert store.get_json(f"{hang['run']}/condition.json")["outcome"] == "stalled"
