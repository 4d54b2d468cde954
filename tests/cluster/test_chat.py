"""`yard chat`: the foundation's chat job end to end on a local Ray and the toy zoo."""
import pytest

from cluster.config import ConfigError, load_config
from cluster.chat import DEFAULT_CHAT_CONFIG, ChatJobConfig, run_chat
from cluster.storage import open_store

pytestmark = pytest.mark.slow


def ledger_rows(store) -> list[dict]:
    import json

    (key,) = [k for k in store.list_keys("jobs/") if k.endswith("/ledger.jsonl")]
    return [json.loads(line) for line in store.get_bytes(key).decode().splitlines()]


def chat_cfg(tmp_path, zoo, *overrides):
    return load_config(
        DEFAULT_CHAT_CONFIG, ChatJobConfig,
        ["zoo=null", f"registry=[{zoo.registry_path}]", f"storage.uri={tmp_path}", "max_new_tokens=40", *overrides],
    )


def test_chat_job_answers_with_every_model_and_reports(ray_local, zoo, tmp_path):
    models = sorted(zoo.models)[:3]
    code, summary = run_chat(chat_cfg(tmp_path, zoo, f"models={models}"))
    assert code == 0 and summary["status"] == "ok"
    store = open_store(str(tmp_path))
    for mid in models:
        reply = store.get_json(store.latest("chat", mid, prefer=(".json",)).key)
        assert reply["status"] == "ok" and len(reply["reply"]) >= 20, reply
        assert reply["plan"]["dtype"] == "float32" and reply["plan"]["device_map"] is None
    report = (tmp_path / summary["report"].split(str(tmp_path) + "/", 1)[1]).read_text()
    assert report.count("| ok |") == len(models)
    # a ledger row per model on the worker's CPU, timed by the worker; the report ends with its cost
    rows = ledger_rows(store)
    assert sorted(r["unit"] for r in rows) == models and {r["outcome"] for r in rows} == {"kept"}
    assert all(r["node_type"] == "cpu" and r["cpus"] == 1.0 and r["phases"]["load"] > 0
               and r["phases"]["generate"] > 0 and r["phases"]["start"] > 0 for r in rows), rows
    assert [ln for ln in report.splitlines() if ln.strip()][-1].startswith("Cost: $")
    assert (tmp_path / summary["report"].rsplit("/", 1)[0].split(str(tmp_path) + "/", 1)[1] / "timings.png").stat().st_size > 1000
    # progress records: every worker finished, the job succeeded
    jobs = [store.get_state(k) for k in store.list_state("jobs/")]
    assert [j["status"] for j in jobs] == ["succeeded"]
    tasks = [store.get_state(k) for k in store.list_state("progress/")]
    assert {t["status"] for t in tasks} == {"succeeded"} and sum(t["done"] for t in tasks) == len(models)


def test_one_broken_model_fails_the_job_but_keeps_the_others(ray_local, zoo, tmp_path):
    import yaml

    reg = yaml.safe_load(open(zoo.registry_path))
    good = sorted(reg["models"])[0]
    broken = {"kind": "models", "models": {"broken": {"source": str(tmp_path / "missing-model"), "params_b": 0.001}}}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    code, summary = run_chat(
        chat_cfg(tmp_path, zoo, f"registry=[{zoo.registry_path}, {tmp_path / 'broken.yaml'}]", f"models=[{good}, broken]")
    )
    assert code == 1 and summary["status"] == "failed"
    store = open_store(str(tmp_path))
    assert store.latest("chat", good, prefer=(".json",)) is not None  # finished work kept
    (failed_run,) = store.runs("chat", "broken")
    err = store.get_json(f"{failed_run.prefix}/reply.json")["error"]
    assert "local path" in err and "does not exist" in err
    assert {r["unit"]: r["outcome"] for r in ledger_rows(store)} == {good: "kept", "broken": "failed"}
    report = (tmp_path / summary["report"].split(str(tmp_path) + "/", 1)[1]).read_text()
    assert [ln for ln in report.splitlines() if ln.strip()][-1].startswith("Cost: $")
    (job,) = [store.get_state(k) for k in store.list_state("jobs/")]
    assert job["status"] == "failed" and "broken" in job["message"]


def test_unknown_model_id_fails_before_any_work(zoo, tmp_path):
    with pytest.raises(ConfigError, match="model 'nope': unknown model id"):
        run_chat(chat_cfg(tmp_path, zoo, "models=[nope]"))
    assert not (tmp_path / "jobs").exists()
