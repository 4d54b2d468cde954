"""Job lifecycle: a manifest is written whatever the outcome, and the status record follows."""
import pytest

from cluster.config import StorageConfig
from cluster.jobs import run_job
from cluster.storage import open_store


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
