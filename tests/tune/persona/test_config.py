"""tune/persona/config.py: the seed recipe as defaults, the shipped configs, the child id, and bad
fields refused at load time with one line naming the file and the dotted field."""
import pytest

from cluster.config import ConfigError, load_config, validate
from cluster.ops.jobs import REPO_ROOT
from tune.persona.config import SEED_PRICES, SEED_SEC_PER_STEP, PersonaConfig

MINIMAL = {"kind": "persona", "base": "qwen3-8b", "prep": {"data_dir": "unused"}}


def _cfg(**extra) -> PersonaConfig:
    return validate({**MINIMAL, **extra}, PersonaConfig, "test")


def test_defaults_are_the_seed_recipe():
    cfg = _cfg()
    assert (cfg.lora.r, cfg.lora.alpha) == (64, 128)
    assert (cfg.sft.epochs, cfg.sft.lr, cfg.dpo.epochs, cfg.dpo.lr) == (3, 1e-4, 2, 5e-6)
    assert cfg.chat_template_kwargs == {"enable_thinking": False}
    assert [cfg.resources.sft.num_gpus, cfg.resources.dpo.num_gpus, cfg.resources.merge.num_gpus,
            cfg.resources.probe.num_gpus] == [1, 1, 0, 1]                  # merged on the CPU
    assert (cfg.merge.dtype, cfg.gguf.enabled, cfg.probe.judge, cfg.probe.enabled) == ("bf16", False, None, True)
    assert cfg.plan.gpu_type == "H200 SXM5"
    assert cfg.plan.prices == SEED_PRICES and cfg.plan.sec_per_step == SEED_SEC_PER_STEP


def test_plan_tables_are_copies_of_the_seed_tables():
    cfg = _cfg()
    cfg.plan.prices["H200 SXM5"] = 0.0
    cfg.plan.sec_per_step["H200 SXM5"]["sft"] = 99.0
    assert SEED_PRICES["H200 SXM5"] == 3.99 and SEED_SEC_PER_STEP["H200 SXM5"]["sft"] == 3.0
    assert _cfg().plan.prices["H200 SXM5"] == 3.99


@pytest.mark.parametrize("fields, child", [
    ({}, "qwen3-8b.persona"),
    ({"name": "seoyun"}, "qwen3-8b.seoyun"),
    ({"base": "Qwen/Qwen3-8B", "name": "kate"}, "Qwen-Qwen3-8B.kate"),   # a hub id: "/" never in a child id
    ({"child_id": "my-child"}, "my-child"),
])
def test_resolved_child_id(fields, child):
    assert _cfg(**fields).resolved_child_id == child


def test_dpo_null_and_the_judge_block():
    assert _cfg(dpo=None).dpo is None
    judge = _cfg(probe={"judge": {"replay": True}}).probe.judge
    # checked and filled in by serve.judge.judge.JudgeEndpoint
    assert judge["replay"] is True and judge["max_tokens"] == 2048 and judge["base_url"] is None


def test_shipped_configs_load():
    recipe = load_config(REPO_ROOT / "configs/persona.yaml", PersonaConfig)
    defaults = _cfg()
    # "the values below are the shipped defaults, spelled out"
    for block in ("lora", "sft", "dpo", "chat_template_kwargs", "merge", "probe"):
        assert getattr(recipe, block) == getattr(defaults, block), block
    assert recipe.plan.prices == SEED_PRICES
    for gpu, steps in SEED_SEC_PER_STEP.items():
        assert recipe.plan.sec_per_step[gpu] == pytest.approx(steps, abs=1e-3)
    demo = load_config(REPO_ROOT / "configs/persona.demo.yaml", PersonaConfig)
    assert demo.resolved_child_id == "qwen3-b.seoyun-demo" and demo.probe.judge["replay"] is True
    assert all(getattr(demo.resources, stage).num_gpus == 0 for stage in ("sft", "dpo", "merge", "probe"))


@pytest.mark.parametrize("plan,needle", [
    ({"gpu_type": "A100"}, "gpu_type: 'A100' is not priced"),
    ({"prices": {"L4": 0.8}, "gpu_type": "L4"}, "sec_per_step: no entry for 'L4'"),
    ({"sec_per_step": {"H200 SXM5": {"sft": 3.0}}, "prices": {"H200 SXM5": 3.99}}, "sec_per_step.H200 SXM5.dpo"),
])
def test_bad_price_tables_fail_at_load(plan, needle):
    with pytest.raises(ConfigError, match="plan") as err:
        _cfg(plan=plan)
    assert needle in str(err.value)


def test_bad_fields_name_the_field():
    with pytest.raises(ConfigError, match=r"lora\.r"):
        _cfg(lora={"r": 0})
    with pytest.raises(ConfigError, match=r"probe\.judge"):
        _cfg(probe={"judge": {"base_url": "http://x/v1"}})   # a real judge needs a model


@pytest.mark.parametrize("line, message", [
    ("name: -x", "name: '-x': String should match pattern"),
    ("child_id: a/b", "child_id: 'a/b': String should match pattern"),
    ("resources: {sft: {num_cpus: 0}}", "resources.sft.num_cpus: 0: Input should be greater than 0"),
    ("resources: {gpu: {num_gpus: 1}}", "resources.gpu: {...}: Extra inputs are not permitted"),
    ("merge: {dtype: int8}", "merge.dtype: 'int8': not allowed (allowed: 'bf16', 'fp16' or 'fp32')"),
    ("gguf: {quants: []}", "gguf.quants: []: List should have at least 1 item"),
    ("probe: {max_tokens: 0}", "probe.max_tokens: 0: Input should be greater than or equal to 1"),
    ("probe: {judge: {replay: true, model_name: x}}", "probe.judge.model_name: 'x': Extra inputs are not permitted"),
    ("plan: {prices: {H200 SXM5: -1}}", "plan: {...}: prices.H200 SXM5: -1.0 < 0"),
    ("stall_retries: 6", "stall_retries: 6: Input should be less than or equal to 5"),
    ("stall_after_s: 0", "stall_after_s: 0: Input should be greater than 0"),
    ("load_stall_after_s: -1", "load_stall_after_s: -1: Input should be greater than 0"),
])
def test_bad_field_in_a_file_is_one_line(tmp_path, line, message):
    path = tmp_path / "persona.yaml"
    path.write_text(f"kind: persona\nbase: qwen3-8b\nprep: {{data_dir: unused}}\n{line}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, PersonaConfig)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)


def test_missing_base_and_prep_are_named():
    with pytest.raises(ConfigError, match=r"^test: base: .*Field required"):
        validate({"kind": "persona", "prep": {"data_dir": "d"}}, PersonaConfig, "test")
    with pytest.raises(ConfigError, match=r"^test: prep\.data_dir: .*Field required"):
        validate({"kind": "persona", "base": "b", "prep": {}}, PersonaConfig, "test")
