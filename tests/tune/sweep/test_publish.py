"""tune/sweep/publish.py: what a finished sweep leaves in the store (leaderboard files, rows, the ranking
as data, summary, timing, the killed trials' section) and which candidates join the zoo's lineage.
Rows and candidates are written by hand: no trial runs."""
import json

import matplotlib.figure  # noqa: F401  (the leaderboard's plots: imported here, it takes a second)
import numpy as np
import pytest
from safetensors.numpy import save_file

# imported here, not in a test: publish imports them lazily, and they take seconds
import tune.sweep.leaderboard
import tune.sweep.trial  # noqa: F401
from cluster.config import load_config
from cluster.models.registry import ModelRegistry
from cluster.store.storage import new_run_name
from cluster.store.storage_local import LocalStore
from tune.sweep.publish import RANKED_FILE, print_rows, publish, register_candidates

DEMO = "configs/sweep.demo.yaml"


def row(trial_id, score, *, status="ok", candidate=None, **recipe):
    return {"trial_id": trial_id, "status": status, "prune_depth": 0, "kd_samples": 0, "lora_rank": 0, "quant": "none",
            "perf": 0.4 if score is not None else None, "sec_per_token": 0.001 if score is not None else None,
            "score": score, "size_mb": 3.0, "candidate": candidate, "error": None if status == "ok" else "boom",
            **recipe}


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def sweep_cfg(*overrides):
    return load_config(DEMO, overrides=list(overrides))


BASELINE = {"model_id": "exaone4-c", "perf": 0.5, "sec_per_token": 0.002, "size_mb": 4.0}


def test_publish_writes_one_complete_run_with_everything(store):
    rows = [row("t1", 0.3), row("t2", 0.7), row("t3", None, status="error")]
    incident = {"trial_id": "t3", "kind": "stalled", "phase": "starting", "heartbeat_age_s": 31.0, "limit_s": 30.0,
                "retried": False, "reason": "trial t3 stalled"}
    run = new_run_name()
    prefix = publish(store, sweep_cfg(), run, rows, BASELINE, {"incidents": [incident]}, timing={"rounds": 3})
    assert prefix == f"sweep/demo/{run}"
    (info,) = store.runs("sweep", "demo")
    assert info.ok and info.marker["trials"] == 3 and info.marker["ok"] == 2
    files = {k.rsplit("/", 1)[1] for k in store.list_keys(prefix + "/")}
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.html", "rows.json", RANKED_FILE, "baseline.json",
            "summary.json", "timing.json"} <= files
    ranked = store.get_json(f"{prefix}/{RANKED_FILE}")
    assert [(r["trial_id"], r["rank"]) for r in ranked] == [("t2", 1), ("t1", 2), ("t3", None)]
    assert store.get_json(f"{prefix}/rows.json") == rows and store.get_json(f"{prefix}/timing.json") == {"rounds": 3}
    md = store.get_bytes(f"{prefix}/leaderboard.md").decode()
    assert "## Trials the sweep killed" in md and "| t3 | stalled | starting | 31.0 | 30 | no |" in md


def test_publish_without_timing_or_incidents(store):
    prefix = publish(store, sweep_cfg(), new_run_name(), [row("t1", 0.5)], BASELINE, {})
    files = {k.rsplit("/", 1)[1] for k in store.list_keys(prefix + "/")}
    assert "timing.json" not in files
    assert "Trials the sweep killed" not in store.get_bytes(f"{prefix}/leaderboard.md").decode()


def make_zoo(tmp_path):
    """A one-model zoo: models.yaml registering `base` (./base)."""
    zoo = tmp_path / "zoo"
    model_dir(zoo / "base")
    (zoo / "models.yaml").write_text("kind: models\nmodels:\n  base:\n    source: ./base\n    params_b: 0.001\n"
                                     "    family: llama\n    lineage_family: base\n")
    return zoo


def model_dir(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"w": np.zeros((4, 8), dtype=np.float32)}, str(path / "model.safetensors"))
    return path


def add_candidate(store, tmp_path, trial_id, derivation, config):
    run = store.new_run("candidate", f"demo.{trial_id}")
    run.put_dir("model", model_dir(tmp_path / "src" / trial_id))
    run.put_json("candidate.json", {"trial_id": trial_id, "sweep": "demo", "sweep_run": "r1",
                                    "derivation": derivation, "config": config})
    run.complete()
    return run.prefix


RECIPE = {"prune_depth": 0, "kd_samples": 0, "lora_rank": 0, "quant": "none", "ffn_keep_ratio": 1.0}


def test_the_best_candidates_join_the_zoo_as_children_of_the_base(store, tmp_path):
    zoo = make_zoo(tmp_path)
    cands = {
        "t1": add_candidate(store, tmp_path, "t1", "prune1", {**RECIPE, "prune_depth": 1}),
        "t2": add_candidate(store, tmp_path, "t2", "kd16", {**RECIPE, "kd_samples": 16}),
        "t3": add_candidate(store, tmp_path, "t3", "kd16", {**RECIPE, "kd_samples": 16}),
        "t4": add_candidate(store, tmp_path, "t4", "W8A16", {**RECIPE, "quant": "W8A16"}),
    }
    rows = [row("t1", 0.9, candidate=cands["t1"]), row("t2", 0.8, candidate=cands["t2"]),
            row("t3", 0.7, candidate=cands["t3"]), row("t4", 0.6, candidate=cands["t4"]),
            row("t5", None, status="error")]
    cfg = sweep_cfg("base=base", "register_top=3")
    added = register_candidates(store, rows, cfg, [str(zoo / "models.yaml")])
    assert added == ["demo.prune1", "demo.kd16", "demo.kd16.t3"]  # a repeated recipe keeps the trial id
    reg = ModelRegistry.load([zoo / "models.yaml"])
    assert [reg.get(m).derivation for m in added] == ["pruned", "distilled", "distilled"]
    assert all(reg.get(m).parent == "base" and reg.family_of(m) == "base" for m in added)
    assert "demo.W8A16" not in reg.ids()  # fourth: over register_top
    # a rerun replaces its entries instead of piling up
    assert register_candidates(store, rows, cfg, [str(zoo / "models.yaml")]) == added
    assert len(ModelRegistry.load([zoo / "models.yaml"]).ids()) == 4


def test_nothing_is_registered_for_register_top_0_or_a_base_outside_a_zoo(store, tmp_path):
    zoo = make_zoo(tmp_path)
    rows = [row("t1", 0.9, candidate="candidate/x/y")]
    assert register_candidates(store, rows, sweep_cfg("base=base", "register_top=0"), [str(zoo / "models.yaml")]) == []
    assert register_candidates(store, rows, sweep_cfg("base=other"), [str(zoo / "models.yaml")]) == []
    assert ModelRegistry.load([zoo / "models.yaml"]).ids() == ["base"]


def test_print_rows_shows_the_ranked_table(capsys):
    rows = [row("t1", 0.3), row("t2", None, status="error")]
    summary = {"sweep": "demo", "ok": 1, "trials": 2, "teacher_forward_passes": 1, "trials_per_hour": 60.0,
               "report": "store/sweep/demo/r/leaderboard.md", "tune_dir": "/tmp/tune"}
    print_rows(rows, summary)
    out = capsys.readouterr().out
    assert "yard sweep demo: 1/2 scored" in out and "error: boom" in out
    assert "leaderboard: store/sweep/demo/r/leaderboard.md" in out and "tensorboard --logdir /tmp/tune" in out
