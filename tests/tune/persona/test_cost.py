"""tune/persona/cost.py: the persona plan as `yard cost` units, and a ledger row per stage."""
import pytest

from cluster.capacity.cost import plan_vs_actual
from cluster.capacity.ledger import Ledger
from cluster.capacity.prices import load_prices
from cluster.config import validate
from cluster.ops.jobs import JobContext
from cluster.store.storage import open_store
from tune.persona.config import PersonaConfig
from tune.persona.cost import cost_plan, record_stages
from tune.persona.plan import make_plan


def _cfg(**extra) -> PersonaConfig:
    return validate({"kind": "persona", "base": "qwen3-8b", "prep": {"data_dir": "unused"},
                     "resources": {"sft": {"num_gpus": 1, "accelerator_type": "H200"},
                                   "dpo": {"num_gpus": 1, "accelerator_type": "H200"}}, **extra},
                    PersonaConfig, "test")


def test_the_chosen_projection_becomes_planned_units_on_each_stages_resources():
    cfg = _cfg()
    plan = make_plan(cfg, 1886, 180)
    units = {u["unit"]: u for u in cost_plan(plan, cfg)["units"]}
    h200 = plan.projection("H200 SXM5")
    assert set(units) == {"sft", "dpo", "merge"}
    assert units["sft"]["phases"]["train"] == pytest.approx(h200.seconds["sft"])
    assert units["sft"]["accelerator"] == "H200" and units["sft"]["gpus"] == 1
    assert units["merge"]["gpus"] == 0 and units["merge"]["node_type"] == "cpu"  # merge defaults to CPU


@pytest.mark.parametrize("kept, outcome", [(True, "kept"), (False, "failed")])
def test_stages_become_ledger_rows_and_a_cost_line(tmp_path, kept, outcome):
    cfg = _cfg()
    job = JobContext("persona", "p-1", open_store(str(tmp_path)), cfg, None, ledger=Ledger("p-1", "persona"))
    job.plan = cost_plan(make_plan(cfg, 1886, 180), cfg)
    line = record_stages(job, cfg, {"sft": 720.0, "merge": 100.0}, load_prices(), kept=kept)
    assert [(e.unit, e.outcome, e.seconds) for e in job.ledger.entries] == [("sft", outcome, 720.0),
                                                                           ("merge", outcome, 100.0)]
    # H200 $3.99/h x 0.2 h + 100 s on a $0.045/h core
    assert line.startswith("Cost: $0.7993 (0.200 GPU-h + 0.028 CPU-core-h, 2 attempts)")
    rows = {r[0]: r for r in plan_vs_actual(job.plan, job.ledger.entries, load_prices())}
    assert rows["dpo"][2] == "-" and rows["sft"][2] == "720.0"


def test_persona_sweep_trials_become_ledger_rows_and_a_cost_line(tmp_path):
    from tune.persona.cost import record_trials
    from tune.persona.sweep import PersonaSweepConfig

    sweep_cfg = validate({"kind": "persona_sweep", "persona": {"base": "qwen3-b", "prep": {"data_dir": "x"}},
                          "resources": {"cpus_per_trial": 2, "gpus_per_trial": 0}}, PersonaSweepConfig, "test")
    job = JobContext("sweep", "s-1", open_store(str(tmp_path)), sweep_cfg, None, ledger=Ledger("s-1", "sweep"))
    rows = [{"trial_id": "a", "status": "ok", "wall_s": 3600.0},
            {"trial_id": "b", "status": "error", "error": "OOM", "wall_s": 1800.0},
            {"trial_id": "c", "status": "error", "error": "lost", "wall_s": None}]  # never timed: 0 s, still a row
    line = record_trials(job, rows, sweep_cfg, load_prices())
    assert [(e.unit, e.outcome, e.phases, e.node_type, e.cpus) for e in job.ledger.entries] == [
        ("trial a", "kept", {"train": 3600.0}, "cpu", 2.0), ("trial b", "failed", {"train": 1800.0}, "cpu", 2.0),
        ("trial c", "failed", {"train": 0.0}, "cpu", 2.0)]
    assert job.ledger.entries[1].reason == "OOM"
    assert line.startswith("Cost: $") and "3 attempts" in line and "(1 kept)" in line
