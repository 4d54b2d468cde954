"""Job lifecycle: the job record (start, heartbeat, end: what `yard status` reads) and a manifest
written whatever the outcome."""
import os
import re
import socket

import pytest

from cluster.config import StorageConfig
from cluster.ops.job_record import end_job, job_heartbeat, job_key, start_job
from cluster.ops.jobs import run_job
from cluster.store.storage import StoreError, open_store


def records(store):
    return [store.get_state(k) for k in store.list_state("jobs/")]


def test_successful_job_writes_manifest_with_provenance(tmp_path):
    store = open_store(str(tmp_path))
    cfg = StorageConfig(uri=str(tmp_path))
    with run_job("unit", cfg, store, config_path="x.yaml") as job:
        job.add_artifact("chat/m/run/reply.json")
    art = store.latest("jobs", "unit", prefer=(".json",))
    manifest = store.get_json(art.key)
    assert manifest["status"] == "succeeded"
    assert manifest["config"] == {"uri": str(tmp_path), "endpoint_url": None}
    assert manifest["packages"]["ray"] == "2.60.0" and "torch" in manifest["packages"]
    assert manifest["git_revision"]
    assert manifest["node"]["hostname"] and manifest["node"]["cpu_count"] >= 1
    assert manifest["artifacts"] == ["chat/m/run/reply.json"]
    assert manifest["ended_at"] >= manifest["started_at"]
    (rec,) = records(store)
    assert rec["status"] == "succeeded" and rec["manifest_key"] == art.key


def test_crashing_job_still_writes_failed_manifest_and_reraises(tmp_path):
    store = open_store(str(tmp_path))
    with pytest.raises(RuntimeError, match="boom"):
        with run_job("unit", None, store):
            raise RuntimeError("boom\nsecond line")
    (run,) = store.runs("jobs", "unit")
    assert run.complete and run.marker["status"] == "failed"
    manifest = store.get_json(f"{run.prefix}/manifest.json")
    assert manifest["status"] == "failed" and manifest["message"] == "RuntimeError: boom"
    assert store.latest("jobs", "unit") is None  # a failure is never the latest good run
    (rec,) = records(store)
    assert rec["status"] == "failed"


def test_job_fail_marks_failed_without_raising(tmp_path):
    store = open_store(str(tmp_path))
    with run_job("unit", None, store) as job:
        job.fail("2 of 3 models failed")
    (rec,) = records(store)
    assert rec["status"] == "failed" and "2 of 3" in rec["message"]


def test_the_ledger_and_plan_are_written_beside_the_manifest(tmp_path):
    store = open_store(str(tmp_path))
    with run_job("unit", None, store) as job:
        job.plan = {"kind": "unit", "units": []}
        job.ledger.add(unit="a", node_type="cpu", accelerator=None, gpus=0, cpus=1, phases={"generate": 1.5},
                       outcome="kept")
    (run,) = store.runs("jobs", "unit")
    assert sorted(run.marker["files"]) == ["ledger.jsonl", "manifest.json", "plan.json"]
    (row,) = [line for line in store.get_bytes(f"{run.prefix}/ledger.jsonl").decode().splitlines()]
    assert f'"job_id": "{job.job_id}"' in row and '"market": "on_demand"' in row
    assert store.get_json(f"{run.prefix}/plan.json") == {"kind": "unit", "units": []}
    with run_job("bare", None, store):  # nothing recorded: no empty files
        pass
    (bare,) = store.runs("jobs", "bare")
    assert bare.marker["files"] == ["manifest.json"]


def test_a_bad_price_table_stops_the_job_before_its_record(tmp_path):
    from cluster.config import ConfigError, JobConfig

    store = open_store(str(tmp_path / "store"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: prices\ncpu: {on_demand: -1, spot: 0}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: cpu.on_demand: -1"):
        with run_job("unit", JobConfig(kind="x", cost={"prices": str(bad)}), store):
            pass
    assert records(store) == []


@pytest.fixture
def store(tmp_path):
    """A store for the job-record tests (a run_job test makes its own)."""
    return open_store(str(tmp_path / "yard"))


def test_start_job_writes_a_running_record(store):
    job_id = start_job(store, "chat", config_path="configs/chat.yaml", stall_after_s=30)
    assert re.fullmatch(r"chat-\d{8}-\d{6}-[0-9a-f]{6}", job_id)
    rec = store.get_state(job_key(job_id))
    assert rec["status"] == "running" and rec["ended_at"] is None and rec["manifest_key"] is None
    assert rec["stall_after_s"] == 30.0 and rec["config_path"] == "configs/chat.yaml"
    assert rec["node"] == socket.gethostname() and rec["pid"] == os.getpid()
    assert rec["heartbeat_at"] == rec["started_at"]


def test_start_job_rejects_bad_input(store):
    with pytest.raises(StoreError):
        start_job(store, "bad/name")
    with pytest.raises(ValueError):
        start_job(store, "chat", stall_after_s=0)


def test_end_job_and_heartbeat(store):
    job_id = start_job(store, "chat", now=100.0)
    job_heartbeat(store, job_id, now=150.0)
    assert store.get_state(job_key(job_id))["heartbeat_at"] == 150.0
    end_job(store, job_id, "failed", "RuntimeError: boom", manifest_key="jobs/chat/x/manifest.json", now=200.0)
    rec = store.get_state(job_key(job_id))
    assert (rec["status"], rec["ended_at"], rec["message"]) == ("failed", 200.0, "RuntimeError: boom")
    assert rec["manifest_key"] == "jobs/chat/x/manifest.json"
    job_heartbeat(store, job_id, now=300.0)  # an ended job is not revived
    assert store.get_state(job_key(job_id))["status"] == "failed"
    with pytest.raises(ValueError, match="allowed"):
        end_job(store, job_id, "done")


def test_a_heartbeat_racing_end_job_cannot_revive_the_job(store):
    """A heartbeat reads the running record, the job ends, the heartbeat writes its copy back:
    the final state lives apart (`ended/`) and wins, in the record and in `yard status`."""
    from cluster.ops.job_record import read_job as _read_job
    from cluster.ops.status import collect

    job_id = start_job(store, "chat", now=100.0)
    stale = store.get_state(job_key(job_id))  # what a heartbeat read just before the end
    end_job(store, job_id, "succeeded", now=200.0)
    store.put_state(job_key(job_id), {**stale, "heartbeat_at": 201.0})  # ... and then wrote back
    assert _read_job(store, job_id)["status"] == "succeeded"
    (job,) = collect(store, now=202.0)
    assert job.status == "SUCCEEDED" and job.ended_at == 200.0
    job_heartbeat(store, job_id, now=300.0)
    assert _read_job(store, job_id)["status"] == "succeeded"
