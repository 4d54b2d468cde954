"""`yard chat`: the foundation's chat job end to end on a local Ray and the toy zoo."""
import pytest

from cluster.config import ConfigError, load_config
from cluster.chat import DEFAULT_CHAT_CONFIG, ChatJobConfig, run_chat
from cluster.store.storage import open_store

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


# The chat job's happy path (every model answers, report, ledger, progress) is asserted on the
# demo's own chat step: tests/cluster/test_demo.py (_check_chat_step).


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
