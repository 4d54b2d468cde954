"""tune/persona/plan.py: the seed's own numbers, step caps, the tables. Bad price tables are refused
by the config: test_config.py."""
import pytest

from cluster.config import validate
from tune.persona.config import PersonaConfig
from tune.persona.plan import actual_markdown, cost_usd, make_plan, plan_markdown, stage_steps


def _cfg(**extra) -> PersonaConfig:
    return validate({"kind": "persona", "base": "qwen3-8b", "prep": {"data_dir": "unused"}, **extra},
                    PersonaConfig, "test")


def test_seed_step_counts():
    # seed 001: 1,886 examples x 3 epochs / batch 32 = 177; 180 pairs x 2 / 8 = 45
    assert stage_steps(1886, 3, 16, 2) == 177
    assert stage_steps(180, 2, 4, 2) == 45
    plan = make_plan(_cfg(), 1886, 180)
    assert [(s.stage, s.steps, s.effective_batch) for s in plan.stages] == [("sft", 177, 32), ("dpo", 45, 8)]


def test_seed_wallclock_on_h200():
    plan = make_plan(_cfg(gguf={"enabled": True, "quants": ["q4_k_m", "q5_k_m", "q6_k"]}), 1886, 180)
    h200 = plan.projection("H200 SXM5")
    assert h200.seconds["sft"] == pytest.approx(177 * 3 + 180)       # 531 s compute + ~3 min load
    assert round(h200.seconds["sft"] / 60) == 12                      # the seed's "~12 min total"
    assert h200.seconds["dpo"] == pytest.approx(45 * 5 + 30)         # 225 s compute, base cached
    assert round(h200.seconds["dpo"] / 60) == 4                       # "~4 min"
    assert h200.seconds["merge"] == pytest.approx(16 * 60)            # merge + q4/q5/q6: "~16 min total"
    # the seed's 35-45 min on H200 also counts a 3-5 min upload this job does not do
    assert 30 * 60 <= h200.total_s <= 45 * 60
    # slower types take longer and are priced at their own rate
    assert plan.projection("H100 PCIe").seconds["sft"] > plan.projection("H100 SXM5").seconds["sft"] > h200.seconds["sft"]


@pytest.mark.parametrize("gpu,hours,seed_usd", [("H200 SXM5", 0.75, 3.00), ("H100 SXM5", 1.0, 3.50),
                                                 ("H100 PCIe", 1.5, 3.75)])
def test_seed_costs_at_seed_wallclocks(gpu, hours, seed_usd):
    price = _cfg().plan.prices[gpu]
    assert cost_usd(hours * 3600, price) == pytest.approx(seed_usd, abs=0.02)


def test_max_steps_caps_and_dpo_null():
    plan = make_plan(_cfg(sft={"max_steps": 3}, dpo=None), 1886, 180)
    assert [(s.stage, s.steps) for s in plan.stages] == [("sft", 3)]
    assert set(plan.projection("H200 SXM5").seconds) == {"sft", "merge"}


def test_zero_pairs_projects_no_dpo_time():
    plan = make_plan(_cfg(), 100, 0)
    assert plan.stage("dpo").steps == 0
    assert "dpo" not in plan.projection("H200 SXM5").seconds


def test_step_time_scales_with_tokens_per_step():
    small = make_plan(_cfg(sft={"batch_size": 8, "grad_accum": 1, "max_length": 512}), 1886, 0)
    # 8 x 1 x 512 tokens per step is 1/8 of the seed's 16 x 2 x 1024
    assert small.stage("sft").step_scale == pytest.approx(1 / 8)
    assert small.projection("H200 SXM5").seconds["sft"] == pytest.approx(small.stage("sft").steps * 3 / 8 + 180)


def test_plan_table_and_actual_table():
    plan = make_plan(_cfg(), 1886, 180)
    table = plan_markdown(plan)
    assert "| sft | 1886 | 3 | 32 | 1024 | 177 |" in table
    assert "| dpo | 180 | 2 | 8 | 1024 | 45 |" in table
    assert "H200 SXM5 (chosen)" in table and "H100 PCIe" in table
    actual = actual_markdown(plan, {"sft": 1800.0, "dpo": 0.0, "merge": 0.0}, {"sft": 176, "dpo": 44})
    # half an hour priced at the chosen H200's $3.99/h
    assert "30m00s ($2.00)" in actual
    assert "| sft | 177 | 176 |" in actual


@pytest.mark.parametrize("device, expected", [
    ("NVIDIA H200", "H200 SXM5"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 80GB HBM3", None),   # SXM5 or PCIe? not said: no guess
    ("NVIDIA A100-SXM4-80GB", None), ("cpu", None)])
def test_a_cuda_device_name_maps_to_a_priced_gpu_type(device, expected):
    from tune.persona.plan import gpu_type_of

    assert gpu_type_of(device, _cfg().plan.prices) == expected


def _stored_run(store, name: str, *, base="qwen3-8b", r=64, device="NVIDIA H200", sft=(27, 59.4), scale=1.0):
    writer = store.new_run("persona", "seoyun", name=name)
    writer.put_json("summary.json", {
        "base": base, "lora": {"r": r, "qlora": True},
        "plan": {"stages": [{"stage": "sft", "step_scale": scale}, {"stage": "dpo", "step_scale": 1.0}]},
        "stages": [{"stage": "sft", "steps": sft[0], "seconds": sft[1], "device": device, "backend": "unsloth"},
                   {"stage": "dpo", "steps": 10, "seconds": 62.5, "device": device, "backend": "unsloth"}]})
    writer.complete()


def test_plan_uses_step_times_measured_in_the_store(tmp_path):
    from cluster.store.storage import open_store
    from tune.persona.plan import measured_step_times

    store = open_store(str(tmp_path))
    cfg = _cfg()
    assert measured_step_times(store, cfg) == {}
    _stored_run(store, "20261130-134922-aaaaaaaaaaaa", sft=(27, 81.0), scale=0.5)   # 3 s/step at half the tokens
    _stored_run(store, "20261130-150000-bbbbbbbbbbbb", sft=(27, 54.0), scale=0.5)   # newer: 2 s -> 4 s at seed shape
    _stored_run(store, "20261130-160000-cccccccccccc", base="other-base")            # another base: not comparable
    _stored_run(store, "20261130-170000-dddddddddddd", r=8)                           # another LoRA rank: neither
    _stored_run(store, "20261130-180000-eeeeeeeeeeee", device="cpu")                  # not a priced GPU type
    measured = measured_step_times(store, cfg)
    assert list(measured) == ["H200 SXM5"]
    assert measured["H200 SXM5"]["sft"].sec_per_step == pytest.approx(4.0)
    assert measured["H200 SXM5"]["sft"].run.endswith("20261130-150000-bbbbbbbbbbbb")
    assert measured["H200 SXM5"]["dpo"].sec_per_step == pytest.approx(6.25)

    plan = make_plan(cfg, 1886, 180, measured)
    assert plan.projection("H200 SXM5").seconds["sft"] == pytest.approx(177 * 4.0 + 180)
    assert plan.projection("H200 SXM5").seconds["dpo"] == pytest.approx(45 * 6.25 + 30)
    assert plan.projection("H100 SXM5").seconds == make_plan(cfg, 1886, 180).projection("H100 SXM5").seconds
    text = plan_markdown(plan)
    assert "- H200 SXM5 sft: 4.00 s per step at the seed's batch shape, measured in" in text
    assert plan.to_dict()["measured"]["H200 SXM5"]["sft"]["device"] == "NVIDIA H200"
