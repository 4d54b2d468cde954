"""`yard status`: RUNNING / STALLED / SUCCEEDED from the records, a real stuck process included."""
import io
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from cluster.ops import status
from cluster.ops.job_record import end_job, start_job
from cluster.ops.progress import ProgressReporter, progress_key
from cluster.store.storage import open_store

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "yard"))


def _one(statuses, name):
    [job] = [j for j in statuses if j.job_name == name]
    return job


def _table_text(statuses) -> str:
    buf = io.StringIO()
    Console(file=buf, width=250).print(status.render_table(statuses))
    return buf.getvalue()


def test_running_stalled_and_per_phase_limits(store):
    t0 = 1_000_000.0
    job_id = start_job(store, "dna", stall_after_s=60, now=t0)
    rep = ProgressReporter(store, job_id, task="worker-0", total=128, console=False, clock=lambda: t0)
    rep.phase("loading", item="llama-70b", stall_after_s=1800)  # a long load is allowed here
    assert _one(status.collect(store, now=t0 + 30), "dna").status == "RUNNING"
    assert _one(status.collect(store, now=t0 + 600), "dna").status == "RUNNING"
    job = _one(status.collect(store, now=t0 + 1900), "dna")
    assert job.status == "STALLED"
    [task] = job.tasks
    assert (task.status, task.phase, task.item) == ("STALLED", "loading", "llama-70b")


def test_healthy_finished_and_failed_jobs(store):
    healthy = start_job(store, "healthy")
    rep = ProgressReporter(store, healthy, total=128, min_interval_s=0, console=False)
    rep.phase("generating", item="llama-a")
    rep.advance(6, item="llama-a")
    done = start_job(store, "done")
    with ProgressReporter(store, done, total=2, console=False) as r:
        r.advance(2)
    end_job(store, done, "succeeded")
    bad = start_job(store, "bad")
    end_job(store, bad, "failed", "RuntimeError: boom at [bold]x[/]")

    statuses = status.collect(store)
    assert [_one(statuses, n).status for n in ("healthy", "done", "bad")] == ["RUNNING", "SUCCEEDED", "FAILED"]
    [task] = _one(statuses, "healthy").tasks
    assert task.progress == "6/128 (4.7%)" and task.heartbeat_age_s < 5
    text = _table_text(statuses)
    assert "6/128 (4.7%)" in text and "RuntimeError: boom at [bold]x[/]" in text
    assert "1 running, 1 succeeded, 1 failed" in text


def test_job_without_tasks_stalls_on_its_own_heartbeat(store):
    start_job(store, "driver", stall_after_s=10, now=100.0)
    job = _one(status.collect(store, now=105.0), "driver")
    assert job.status == "RUNNING" and status.rows(job)[0][1] == "(job)"
    assert _one(status.collect(store, now=111.0), "driver").status == "STALLED"


def test_a_task_left_running_by_an_ended_job_takes_the_job_status(store):
    job_id = start_job(store, "crashy")
    ProgressReporter(store, job_id, task="worker-1", console=False).phase("generating")
    end_job(store, job_id, "failed", "worker died")
    [task] = _one(status.collect(store), "crashy").tasks
    assert task.status == "FAILED"


def test_old_jobs_are_hidden_unless_all(store):
    old = start_job(store, "ancient", now=1000.0)
    end_job(store, old, "succeeded", now=1010.0)
    now = 1010.0 + 8 * 86400
    assert status.collect(store, now=now) == []
    assert [j.status for j in status.collect(store, now=now, recent_s=math.inf)] == ["SUCCEEDED"]


def test_markdown_report(store, tmp_path, capsys):
    job_id = start_job(store, "dna", config_path="configs/dna.yaml")
    with ProgressReporter(store, job_id, total=4, console=False) as rep:
        rep.phase("generating", item="llama-a")
        rep.advance(4, item="llama-a")
    end_job(store, job_id, "succeeded", manifest_key="jobs/dna/run/manifest.json")
    out = tmp_path / "reports" / "status.md"
    assert status.main(["--store", store.uri, "--markdown", str(out)]) == 0
    md = out.read_text()
    assert "**1 succeeded**" in md and f"## {job_id}: SUCCEEDED" in md
    assert "| task | status | phase | item | progress |" in md
    assert "| main | SUCCEEDED | done | - | 4/4 (100.0%) |" in md
    assert "configs/dna.yaml" in md and "jobs/dna/run/manifest.json" in md
    assert f"wrote {out}" in capsys.readouterr().out


def test_empty_store_prints_one_friendly_line(tmp_path, capsys):
    assert status.main(["--store", str(tmp_path / "nothing")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("no jobs recorded in")


STUCK = """
import sys, time
sys.path.insert(0, {repo!r})
from cluster.store.storage import open_store
from cluster.ops.job_record import start_job
from cluster.ops.progress import ProgressReporter
store = open_store({store!r})
job_id = start_job(store, "stuck", stall_after_s=1.5)
rep = ProgressReporter(store, job_id, total=128, console=False)
rep.phase("loading", item="llama-a")
print(job_id, flush=True)
time.sleep(60)  # a model load that never returns
"""


def test_a_deliberately_stuck_job_shows_stalled_and_survives_its_killed_worker(store, capsys):
    code = STUCK.format(repo=str(REPO), store=store.uri)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        job_id = proc.stdout.readline().strip()
        assert job_id.startswith("stuck-"), "the stuck worker did not start"
        assert proc.poll() is None
        time.sleep(2.5)  # past its 1.5 s limit while the process is alive and hanging
        assert status.main(["--store", store.uri]) == 0
        out = capsys.readouterr().out
        [row] = [line for line in out.splitlines() if job_id in line]
        assert "STALLED" in row and "loading" in row and "llama-a" in row and "0/128" in row
    finally:
        proc.kill()
        proc.wait()
    # the record outlives its worker
    rec = store.get_state(progress_key(job_id, "main"))
    assert (rec["status"], rec["phase"], rec["item"], rec["pid"]) == ("running", "loading", "llama-a", proc.pid)
    assert _one(status.collect(store), "stuck").status == "STALLED"


def test_tasks_in_natural_order_and_bad_records_skipped(store, caplog):
    job_id = start_job(store, "fanout")
    for task in ("worker-10", "worker-2", "worker-1"):
        ProgressReporter(store, job_id, task=task, console=False)
    store.put_bytes(f"_state/progress/{job_id}/worker-3.json", b"{not json")
    job = _one(status.collect(store), "fanout")
    assert [t.task for t in job.tasks] == ["worker-1", "worker-2", "worker-10"]
    assert "worker-3.json" in caplog.text
