"""tune/sweep/trial.py: one trial's pipeline (prune -> distil -> heal -> quantize -> evaluate), run here
without Ray on the toy zoo's base, after the sweep's real prepare step."""
import json
import sys
from pathlib import Path

import pytest

from cluster.config import load_config
from cluster.store.storage import open_store
from tune.config import SweepConfig
from tune.sweep.sweep import prepare, validate
from tune.sweep.trial import CANDIDATE_FILE, TrialSetup, candidate_id, run_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

DEMO = Path(__file__).resolve().parents[3] / "configs" / "sweep.demo.yaml"


@pytest.fixture(scope="module")
def sweep(zoo, tmp_path_factory):
    """(config, TrialSetup) of a small sweep whose quantization runs in another interpreter."""
    store = tmp_path_factory.mktemp("trial") / "store"
    cfg = load_config(DEMO, SweepConfig, ["zoo=null", f"registry=[{zoo.registry_path}]", f"storage.uri={store}",
                                          "kd.steps=2", "heal.steps=2", "eval.max_new_tokens=8",
                                          f"quant.python={sys.executable}",
                                          "search.space.kd_samples={choice: [8]}"])
    registry_paths = [str(zoo.registry_path)]
    checked = validate(cfg, str(DEMO), registry_paths)
    benchmarks = [b.__class__(b.spec, b.items[:6], b.sha256) for b in checked.benchmarks]
    prep = prepare(cfg.model_dump(), registry_paths, str(store), None, checked.items, benchmarks)
    setup = TrialSetup(sweep=cfg.model_dump(), sweep_name=cfg.name, sweep_run="r1", registry_paths=registry_paths,
                       store_uri=str(store), endpoint_url=None, job_id="", calibration=prep["calibration"],
                       holdout=prep["holdout"], bi_scores=prep["bi_scores"], teacher_key=prep["teacher_key"],
                       baseline=prep["baseline"], benchmarks=benchmarks)
    return cfg, setup


def test_a_trial_quantizes_in_another_interpreter_and_publishes_its_candidate(sweep):
    cfg, setup = sweep
    reports = []
    metrics = run_pipeline({"prune_depth": 1, "quant": "W8A16", "kd_samples": 8, "lora_rank": 4}, setup, "t1",
                           report=lambda m, payload=None: reports.append((m, payload)))
    assert [m["stage"] for m, _ in reports] == ["prune", "distil", "heal", "evaluate"]
    assert metrics["layers"] == 5 and 0 < metrics["val_loss"] < 20 and 0 <= metrics["score"] <= 1
    store = open_store(setup.store_uri)
    run = store.runs("candidate", candidate_id(setup, "t1"))[-1]
    payload = store.get_json(f"{run.prefix}/{CANDIDATE_FILE}")
    assert payload["quant"]["format"] == "pack-quantized" and payload["metrics"]["candidate"] == run.prefix
    config = json.loads(store.get_bytes(f"{run.prefix}/model/config.json"))
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    # the candidate's val_loss was measured in the child, on the reloaded quantized model
    assert reports[-1][0]["val_loss"] == metrics["val_loss"] != reports[2][0]["val_loss"]


def test_a_finished_trial_is_reported_from_the_store_not_redone(sweep):
    _, setup = sweep
    first = run_pipeline({"prune_depth": 0, "quant": "none", "kd_samples": 0, "lora_rank": 0}, setup, "t2",
                         report=lambda m, payload=None: None)
    reports = []
    again = run_pipeline({"prune_depth": 0, "quant": "none", "kd_samples": 0, "lora_rank": 0}, setup, "t2",
                         report=lambda m, payload=None: reports.append(m))
    assert again == first and all(m["resumed_from_store"] for m in reports) and len(reports) == 4


def test_a_trial_is_under_the_load_limit_until_its_first_phase(sweep, monkeypatch):
    # A rerun's fresh process imports the compression stack before it loads the base: under
    # stall_after_s (seconds, for steps) a busy machine had the watchdog kill it while starting.
    import dataclasses

    import tune.sweep.trial as trial
    from cluster.ops.progress import read_task

    cfg, setup = sweep
    seen = {}

    def pipeline(config, setup, trial_id, cfg, store, cid, started, reporter, report):  # where the work begins
        seen.update(read_task(store, setup.job_id, trial.trial_task(trial_id)))
        return {}

    monkeypatch.setattr(trial, "_pipeline", pipeline)
    run_pipeline({"prune_depth": 1, "quant": "none", "kd_samples": 0, "lora_rank": 0},
                 dataclasses.replace(setup, job_id="sweep-start-limit"), "t3", report=lambda m, payload=None: None)
    assert seen["phase"] == "starting" and seen["item"] == cfg.base
    assert seen["stall_after_s"] == cfg.load_stall_after_s > cfg.stall_after_s
