"""`yard dna` end to end on local Ray and the toy zoo: plan, gates, retries, report, exit codes."""
import os
import sys
from pathlib import Path

import cloudpickle
import pytest

from actors.config import DnaConfig
from actors.dna_job import DEMO_CONFIG, run_dna
from cluster.config import load_config
from cluster.storage import open_store

pytestmark = pytest.mark.slow
FAST = ["probes.count=8", "generation.max_new_tokens=60", "generation.batch_size=8", "hosts.max_hosts=2"]


def cfg_for(zoo, store_dir, models, *extra):
    return load_config(
        DEMO_CONFIG, DnaConfig,
        ["zoo=null", f"registry=[{zoo.registry_path}]", f"storage.uri={store_dir}", f"models={models}", *FAST, *extra],
    )


def test_dry_run_prints_the_plan_and_runs_nothing(ray_local, zoo, tmp_path, capsys):
    models = sorted(zoo.models)[:3]
    code, summary = run_dna(cfg_for(zoo, tmp_path, models), dry_run=True)
    out = capsys.readouterr().out
    assert code == 0 and "host-0" in out and "host-1" in out
    assert all(m in out for m in models)
    assert not (tmp_path / "dna").exists() and not (tmp_path / "jobs").exists()


def test_fingerprints_the_zoo_recovers_lineage_and_reports(ray_local, zoo, tmp_path):
    """The demo config (all 40 probes) on every zoo model: each sits nearest its own family."""
    models = sorted(zoo.models)
    cfg = load_config(DEMO_CONFIG, DnaConfig, ["zoo=null", f"registry=[{zoo.registry_path}]", f"storage.uri={tmp_path}"])
    code, summary = run_dna(cfg)
    assert summary["outcomes"] == {m: "ok" for m in models}, summary
    assert code == 0 and summary["published"]
    assert summary["nearest_family_accuracy"] == 1.0
    store = open_store(str(tmp_path))
    for m in models:
        art = store.latest("dna", m, prefer=(".npy",))
        assert art.name == "dna.npy"
        responses = store.get_json(f"{art.run.prefix}/responses.json")
        assert responses["count"] == 40 and responses["complete"] is True and len(responses["items"]) == 40
    report = Path(summary["report"]).read_text()
    assert "Nearest-family accuracy: **100%**" in report and "llama-a-lora" in report
    assert (Path(summary["report"]).parent / "tree.nwk").read_text().count("llama-a") == 3
    # both hosts reported to the progress registry, per model and phase
    tasks = [store.get_state(k) for k in store.list_state("progress/")]
    assert {t["task"] for t in tasks} >= {"host-0", "host-1"}


def make_crash_once_host(marker: Path):
    """A ModelHost whose process dies (os._exit, like a preempted node) on its first model, once."""
    from actors.host import ModelHost

    class _CrashOnce(ModelHost):
        def run_model(self, model_id, *args):
            if not marker.exists():
                marker.write_text(model_id)
                os._exit(1)
            return super().run_model(model_id, *args)

    return _CrashOnce


def test_infrastructure_failure_is_retried_on_a_fresh_host(ray_local, zoo, tmp_path):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marker = tmp_path / "crashed"
    code, summary = run_dna(
        cfg_for(zoo, tmp_path / "store", ["llama-a", "qwen3-b"], "hosts.max_hosts=1"),
        accept_suspicious=True, host_cls=make_crash_once_host(marker),
    )
    assert marker.exists()  # it really crashed once
    assert code == 0 and summary["outcomes"] == {"llama-a": "ok", "qwen3-b": "ok"}
    manifest_store = open_store(str(tmp_path / "store"))
    tasks = {manifest_store.get_state(k)["task"] for k in manifest_store.list_state("progress/")}
    assert "host-0.2" in tasks  # the replacement host


def make_leaky_host():
    """A ModelHost that reports its first model's GPU memory as not returned: what a vLLM engine
    that cannot be released does on a GPU (this machine has none, so the report is faked)."""
    from actors.host import ModelHost

    class _Leaky(ModelHost):
        def _unload(self, model_id, out, *args):
            super()._unload(model_id, out, *args)
            if not self.models:  # the first model of this host
                out["memory"]["returned"] = False

    return _Leaky


def test_a_host_that_keeps_gpu_memory_is_replaced_before_the_next_model(ray_local, zoo, tmp_path):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    code, summary = run_dna(cfg_for(zoo, tmp_path / "store", ["llama-a", "qwen3-b"], "hosts.max_hosts=1"),
                            accept_suspicious=True, host_cls=make_leaky_host())
    assert code == 0 and summary["outcomes"] == {"llama-a": "ok", "qwen3-b": "ok"}  # the DNA itself is good
    store = open_store(str(tmp_path / "store"))
    done = {}
    for key in store.list_state("progress/"):
        rec = store.get_state(key)
        done[rec["task"]] = rec.get("status")
    assert set(done) == {"host-0", "host-0.2"}  # each model on its own host
    assert all(status == "succeeded" for status in done.values())


def test_deterministic_error_twice_is_skipped_and_others_are_kept(ray_local, zoo, tmp_path):
    import shutil

    import yaml

    # a checkpoint transformers cannot load (weights do not match the config): deterministic
    broken = tmp_path / "broken-model"
    shutil.copytree(Path(zoo.zoo_dir) / "llama-a", broken)
    cfgjson = broken / "config.json"
    cfgjson.write_text(cfgjson.read_text().replace('"hidden_size": 96', '"hidden_size": 80'))
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump(
        {"kind": "models", "models": {"broken": {"source": str(broken), "params_b": 0.001, "family": "llama"}}}
    ))
    cfg = cfg_for(zoo, tmp_path / "store", ["broken", "qwen3-b", "missing-id"], "hosts.max_hosts=1")
    cfg = cfg.model_copy(update={"registry": [str(zoo.registry_path), str(tmp_path / "extra.yaml")]})
    code, summary = run_dna(cfg, accept_suspicious=True)
    assert code == 1
    assert summary["outcomes"] == {"broken": "skipped", "qwen3-b": "ok", "missing-id": "rejected"}
    store = open_store(str(tmp_path / "store"))
    assert store.latest("dna", "qwen3-b", prefer=(".npy",)) is not None  # finished work kept
    assert store.latest("dna", "broken") is None
    assert len(store.runs("dna", "broken")) == 2  # tried twice, then skipped
    report = Path(summary["report"]).read_text()
    assert "skipped after the same error twice" in report and "missing-id: unknown model id" in report


def test_bad_probe_file_is_one_line_exit_2(zoo, tmp_path, capsys):
    from cluster.cli import main as yard

    bad = tmp_path / "probes.yaml"
    bad.write_text("kind: probes\nname: x\nprobes: []\n")
    code = yard(["dna", str(DEMO_CONFIG), "zoo=null", f"registry=[{zoo.registry_path}]", f"probes.file={bad}", "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(bad) in err[0]


def test_same_model_twice_is_distance_zero_and_the_outlier_gate_refuses_to_publish(ray_local, zoo, tmp_path):
    import yaml

    twin = {"kind": "models", "models": {"llama-a-twin": {
        "source": str(Path(zoo.zoo_dir) / "llama-a"), "params_b": 0.001, "family": "llama", "lineage_family": "twin"}}}
    (tmp_path / "twin.yaml").write_text(yaml.safe_dump(twin))
    registry = [str(zoo.registry_path), str(tmp_path / "twin.yaml")]
    cfg = cfg_for(zoo, tmp_path / "a", ["llama-a", "llama-a-twin", "qwen3-b"])
    cfg = cfg.model_copy(update={"registry": registry})
    code, summary = run_dna(cfg)
    assert code == 3 and not summary["published"]  # refused, and never "Completed"
    ((a, b, d),) = summary["suspicious"]
    assert {a, b} == {"llama-a", "llama-a-twin"} and d < 1e-6  # greedy: the same fingerprint twice
    report = Path(summary["report"])
    assert "REFUSED" in report.read_text() and not (report.parent / "tree.nwk").exists()
    # declared identical: no longer suspicious, the tree is published
    cfg = cfg.model_copy(update={"identical": [["llama-a", "llama-a-twin"]], "storage": cfg.storage.model_copy(update={"uri": str(tmp_path / "b")})})
    code, summary = run_dna(cfg)
    assert code == 0 and summary["published"] and summary["suspicious"] == []
