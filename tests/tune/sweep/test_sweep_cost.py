"""A sweep's plan (measured trial time where the store has it) and its ledger rows per trial."""
from pathlib import Path

import pytest

from cluster.capacity.cost import plan_vs_actual
from cluster.capacity.ledger import Ledger
from cluster.capacity.prices import load_prices
from cluster.config import load_config
from cluster.ops.jobs import JobContext
from cluster.store.storage import open_store
from tune.config import SweepConfig
from tune.sweep.sweep_cost import ASSUMED_PREPARE_S, ASSUMED_TRIAL_S, plan_text, record_sweep, sweep_plan

DEMO = Path(__file__).resolve().parents[3] / "configs" / "sweep.demo.yaml"


def _cfg(tmp_path, *overrides):
    return load_config(DEMO, SweepConfig, ["zoo=null", "registry=[]", f"storage.uri={tmp_path}",
                                            "search.max_concurrent_trials=2", *overrides])


def test_plan_assumes_without_history_and_measures_with_it(tmp_path):
    cfg = _cfg(tmp_path)
    store = open_store(str(tmp_path))
    trials = cfg.search.trial_count()
    plan = sweep_plan(cfg, store)
    assert plan["trials"] == trials and plan["trial_s"] == ASSUMED_TRIAL_S["cpu"]
    timing_s = trials * cfg.timing.rounds * (2.0 + cfg.timing.min_visit_s)  # HF: a visit per candidate a round
    assert plan["wall_s"] == ASSUMED_PREPARE_S["cpu"] + -(-trials // 2) * ASSUMED_TRIAL_S["cpu"] + timing_s
    assert "assumed" in plan["basis"]["trials"] and any("per trial" in a for a in plan["assumptions"])
    assert f"timing phase: {trials * cfg.timing.rounds} visits" in " ".join(plan["assumptions"])
    # on vLLM every visit starts a process and an engine, the base's too; no timing phase, no unit
    qa = f"eval.benchmarks=[{{name: qa, task: qa, source: {DEMO.parent / 'bench/zoo_qa.jsonl'}}}]"
    vllm = sweep_plan(_cfg(tmp_path, "eval.engine=vllm", qa, "resources.gpus_per_trial=1"), store)
    assert {u["unit"]: u["phases"]["evaluate"] for u in vllm["units"] if u["unit"] == "timing"} == {
        "timing": (trials + 1) * cfg.timing.rounds * (90.0 + cfg.timing.min_visit_s)}
    assert "timing" not in {u["unit"] for u in sweep_plan(_cfg(tmp_path, "timing.enabled=false"), store)["units"]}
    run = store.new_run("sweep", cfg.name)
    run.put_json("rows.json", [{"trial_id": "a", "status": "ok", "wall_s": 10.0},
                               {"trial_id": "b", "status": "ok", "seconds": 20.0},
                               {"trial_id": "c", "status": "error", "wall_s": 999.0}])
    run.complete()
    plan = sweep_plan(cfg, store)
    assert plan["trial_s"] == 15.0 and f"measured (sweep run {run.name})" in plan["basis"]["trials"]
    text = plan_text(plan, load_prices())
    assert text.startswith(f"{trials} trials ({trials} x 15 s, measured") and "on demand" in text


def test_trials_become_ledger_rows_and_the_leaderboard_gets_plan_and_cost(tmp_path):
    cfg = _cfg(tmp_path)
    job = JobContext("sweep", "sweep-1", open_store(str(tmp_path)), cfg, None, ledger=Ledger("sweep-1", "sweep"))
    job.plan = sweep_plan(cfg, job.store)
    rows = [{"trial_id": "t1", "status": "ok", "wall_s": 30.0}, {"trial_id": "t2", "status": "stopped", "wall_s": 10.0},
            {"trial_id": "t3", "status": "error", "wall_s": 5.0, "error": "boom"},
            {"trial_id": "t4", "status": "error", "seconds": None, "error": "killed"}]
    incidents = [{"trial_id": "t4", "kind": "stalled", "retried": True}, {"trial_id": "t4", "kind": "stalled", "retried": False}]
    # progress records: t4 killed once and rerun, then killed for good; Tune never heard from it again
    for task, start, end in (("trial-t4.killed1", 100.0, 140.0), ("trial-t4", 150.0, 170.0)):
        job.store.put_state(f"progress/sweep-1/{task}.json", {"task": task, "started_at": start, "heartbeat_at": end - 5,
                                                              "updated_at": end, "status": "failed", "message": "stalled"})
    lines = record_sweep(job, rows, cfg, load_prices(), prepare_s=12.0, timing_s=3.0, incidents=incidents)
    got = [(e.unit, e.outcome, e.seconds, e.attempt) for e in job.ledger.entries]
    assert got == [("prepare", "kept", 12.0, 1), ("trial t1", "kept", 30.0, 1), ("trial t2", "stopped", 10.0, 1),
                   ("trial t3", "failed", 5.0, 1), ("trial t4", "stalled", 40.0, 1), ("trial t4", "stalled", 20.0, 2),
                   ("timing", "kept", 3.0, 1)]
    assert all(e.gpus == 0 and e.cpus == cfg.resources.cpus_per_trial for e in job.ledger.entries)
    assert "## Cost" in lines and lines[-2].startswith("Cost: $") and "stopped by ASHA" in lines[-2]
    rows = {r[0]: r for r in plan_vs_actual(job.plan, job.ledger.entries, load_prices())}
    assert rows["trials"][2] == "105.0" and rows["trials"][5] == "5"
    assert rows["trials"][6] == "1 failed, 1 kept, 1 stalled, 1 stopped"
    assert rows["timing"][-1] != "not planned"  # the plan prices the timing phase too


def test_a_failed_timing_step_is_waste_with_its_reason_and_a_resume_adds_no_trial_twice(tmp_path):
    cfg = _cfg(tmp_path)
    rows = [{"trial_id": "t1", "status": "ok", "wall_s": 30.0}]
    job = JobContext("sweep", "sweep-1", open_store(str(tmp_path)), cfg, None, ledger=Ledger("sweep-1", "sweep"))
    record_sweep(job, rows, cfg, load_prices(), prepare_s=2.0, timing_s=4.0, timing_failed="ValueError: boom")
    assert [(e.unit, e.outcome, e.seconds, e.reason) for e in job.ledger.entries] == [
        ("prepare", "kept", 2.0, ""), ("trial t1", "kept", 30.0, ""), ("timing", "failed", 4.0, "ValueError: boom")]
    # the resume times them again: its ledger holds its own prepare and timing, and of the trials only
    # t2, which ran in it (errored before, rerun with --restart-errored: its progress record is this job's)
    again = JobContext("sweep", "sweep-2", open_store(str(tmp_path)), cfg, None, ledger=Ledger("sweep-2", "sweep"))
    again.store.put_state("progress/sweep-2/trial-t2.json", {"task": "trial-t2", "started_at": 10.0,
                                                             "updated_at": 17.0, "status": "succeeded"})
    rows = [*rows, {"trial_id": "t2", "status": "ok", "wall_s": 7.0}]
    record_sweep(again, rows, cfg, load_prices(), prepare_s=1.0, timing_s=5.0, trials_recorded=True)
    assert [(e.unit, e.outcome, e.seconds) for e in again.ledger.entries] == [
        ("prepare", "kept", 1.0), ("trial t2", "kept", 7.0), ("timing", "kept", 5.0)]


@pytest.mark.parametrize("flag", ["--plan", "--dry-run"])
def test_yard_sweep_plan_prints_and_runs_nothing(tmp_path, capsys, flag, monkeypatch):
    import cluster.runtime
    from cluster.cli import main as yard

    monkeypatch.setattr(cluster.runtime, "connect", lambda *a, **k: None)  # the plan needs no trial
    assert yard(["sweep", str(DEMO), "zoo=null", "registry=[]", f"storage.uri={tmp_path}", flag]) == 0
    out = capsys.readouterr().out
    assert "trials (" in out and "expected wall time" in out and "- assumed:" in out
    assert not (tmp_path / "jobs").exists() and not (tmp_path / "sweep").exists()
