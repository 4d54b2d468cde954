"""tune/config.py: the `kind: sweep` schema. Search dimensions take exactly one form, every value
a dimension can take is checked (the field named in one line), and Optuna refuses grids. (Paths in
configs: tests/cluster/test_config.py.)"""

import pytest

from cluster.config import ConfigError, load_config, validate
from tune.config import Dimension, ResourcesConfig, SearchConfig, SearchSpace, SweepConfig

DEMO = "configs/sweep.demo.yaml"


def space(**dims) -> SearchSpace:
    return validate(dims, SearchSpace, "space")


@pytest.mark.parametrize("dim, values, kind", [
    ({"grid": [0, 1, 2]}, [0, 1, 2], "grid"),
    ({"choice": [8, 0]}, [8, 0], "choice"),
    ({"randint": [1, 4]}, [1, 4], "randint"),
    ({"value": 3}, [3], "value"),
])
def test_a_dimension_lists_the_values_to_check(dim, values, kind):
    d = Dimension(**dim)
    assert (d.kind, d.values(), d.upper()) == (kind, values, max(values))


@pytest.mark.parametrize("dim, match", [
    ({}, r"give exactly one of grid, choice, randint, uniform, loguniform, value \(got none\)"),
    ({"grid": [1], "value": 1}, r"\(got \['grid', 'value'\]\)"),
    ({"randint": [4, 1]}, r"randint: low 4 > high 1"),
    ({"grid": []}, r"grid: \[\]: "),
])
def test_a_bad_dimension_names_the_problem(dim, match):
    with pytest.raises(ConfigError, match=match):
        validate(dim, Dimension, "dim")


@pytest.mark.parametrize("dims, match", [
    ({"prune_depth": {"grid": [0, -1]}}, r"prune_depth: -1 is not an integer >= 0"),
    ({"lora_rank": {"choice": [8, 4.5]}}, r"lora_rank: 4.5 is not an integer >= 0"),
    ({"kd_samples": {"value": True}}, r"kd_samples: True is not an integer >= 0"),
    ({"quant": {"grid": ["none", "W3A16"]}}, r"quant: 'W3A16' is not a quantization scheme \(allowed: none, W8A16"),
    ({"quant": {"randint": [0, 1]}}, r"quant: "),
    ({"ffn_keep_ratio": {"uniform": [0.0, 1.0]}}, r"ffn_keep_ratio: 0.0 is not in \(0, 1\]"),
    ({"ffn_keep_ratio": {"value": 1.5}}, r"ffn_keep_ratio: 1.5 is not in \(0, 1\]"),
])
def test_every_value_of_a_dimension_is_checked(dims, match):
    with pytest.raises(ConfigError, match=match):
        space(**dims)


def test_left_out_dimensions_take_their_defaults_and_grids_multiply():
    s = space(prune_depth={"grid": [0, 1, 2]}, quant={"grid": ["none", "W8A16"]}, lora_rank={"choice": [0, 8]})
    assert list(s.dims()) == ["prune_depth", "kd_samples", "lora_rank", "quant", "ffn_keep_ratio"]
    assert s.kd_samples.value == 0 and s.ffn_keep_ratio.value == 1.0
    assert s.grid_size() == 6
    assert SearchConfig(space=s, num_samples=2).trial_count() == 12
    assert SearchConfig(space=space(lora_rank={"choice": [0, 8]}), algorithm="optuna", num_samples=5).trial_count() == 5


def test_optuna_cannot_search_grids():
    with pytest.raises(ConfigError, match=r"search: .*Optuna cannot search grids \(prune_depth\)"):
        validate({"algorithm": "optuna", "space": {"prune_depth": {"grid": [0, 1]}}}, SearchConfig, "search")


def test_gpus_per_trial_is_a_fraction_or_a_whole_number():
    assert ResourcesConfig(gpus_per_trial=0.25).gpus_per_trial == 0.25
    assert ResourcesConfig(gpus_per_trial=2).gpus_per_trial == 2
    with pytest.raises(ConfigError, match=r"gpus_per_trial: 1.5 \(a fraction must be < 1, or a whole number\)"):
        validate({"gpus_per_trial": 1.5}, ResourcesConfig, "resources")


def test_the_demo_sweep_is_valid():
    cfg = load_config(DEMO)
    assert isinstance(cfg, SweepConfig) and cfg.name == "demo" and cfg.base == "exaone4-c"


def test_kd_samples_may_not_exceed_the_calibration_texts():
    with pytest.raises(ConfigError, match=r"search.space.kd_samples: 64 > calibration.count 40"):
        load_config(DEMO, overrides=["search.space.kd_samples={choice: [0, 64]}"])


@pytest.mark.parametrize("override, field", [
    ("name=bad name", "name"),
    ("search.max_concurrent_trials=0", "search.max_concurrent_trials"),
    ("search.stall_retries=9", "search.stall_retries"),
    ("search.asha.grace_period=4", "search.asha.grace_period"),
    ("calibration.max_length=4", "calibration.max_length"),
    ("kd.temperature=0", "kd.temperature"),
    ("prune.variant=random", "prune.variant"),
    ("stall_after_s=0", "stall_after_s"),
    ("load_stall_after_s=0", "load_stall_after_s"),
])
def test_bad_values_name_file_and_field(override, field):
    with pytest.raises(ConfigError, match=rf"^{DEMO}: {field}: "):
        load_config(DEMO, overrides=[override])
