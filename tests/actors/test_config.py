"""actors/config.py: the `kind: dna` schema. Greedy, repeatable defaults; every threshold of the
gates in one place; bad values refused naming the field."""
import pytest

from cluster.config import ConfigError, load_config, validate
from actors.config import OFFLINE_ENCODER, DnaConfig, GateConfig, GenerationConfig, WatchdogTier

DEMO = "configs/dna.demo.yaml"


def test_defaults_are_greedy_offline_and_cite_the_playbook():
    cfg = DnaConfig()
    assert cfg.generation.do_sample is False and cfg.generation.max_new_tokens == 256
    assert cfg.encoder.name == OFFLINE_ENCODER and cfg.engine.name == "hf"
    assert (cfg.tree, cfg.analysis.distance, cfg.retries.max_attempts) == ("nj", "centered_cosine", 3)
    assert cfg.registry == ["configs/models.yaml"] and cfg.models is None


def test_the_engine_may_be_given_by_name():
    assert validate({"engine": "vllm"}, DnaConfig, "dna.yaml").engine.name == "vllm"


@pytest.mark.parametrize("data, match", [
    ({"generation": {"min_new_tokens": 300, "max_new_tokens": 256}},
     r"dna.yaml: generation: .*min_new_tokens 300 > max_new_tokens 256"),
    ({"generation": {"max_new_tokens": 9000}}, r"dna.yaml: generation.max_new_tokens: 9000: .*\(allowed: le 8192\)"),
    ({"generation": {"top_p": 0}}, r"dna.yaml: generation.top_p: 0: "),
    ({"tree": "ml"}, r"dna.yaml: tree: 'ml': not allowed \(allowed: 'nj' or 'upgma'\)"),
    ({"gates": {"outlier_distance": 3}}, r"dna.yaml: gates.outlier_distance: 3: .*\(allowed: le 2"),
    ({"gates": {"min_valid_fraction": 1.5}}, r"dna.yaml: gates.min_valid_fraction: 1.5: "),
    ({"gates": {"watchdog": [{"max_params_b": 10}]}}, r"dna.yaml: gates.watchdog.0.seconds_per_prompt: "),
    ({"hosts": {"gpu_mem_headroom": 1.2}}, r"dna.yaml: hosts.gpu_mem_headroom: 1.2: "),
    ({"hosts": {"fresh_per_model": "maybe"}}, r"dna.yaml: hosts.fresh_per_model: 'maybe': .*valid boolean"),
    ({"dna": {"projection_seed": -1}}, r"dna.yaml: dna.projection_seed: -1: "),
    ({"encoder": {"device": "tpu"}}, r"dna.yaml: encoder.device: 'tpu': not allowed"),
    ({"probes": {"count": 0}}, r"dna.yaml: probes.count: 0: "),
    ({"colour": "red"}, r"dna.yaml: colour: 'red': .*\(unknown field\)"),
])
def test_bad_values_name_the_field(data, match):
    with pytest.raises(ConfigError, match=match):
        validate(data, DnaConfig, "dna.yaml")


def test_generation_bounds_allow_equal_min_and_max():
    gen = GenerationConfig(min_new_tokens=64, max_new_tokens=64)
    assert gen.min_new_tokens == gen.max_new_tokens == 64


@pytest.mark.parametrize("params_b, limit", [(0.5, 60), (10, 60), (10.1, 120), (100, 120), (671, 300)])
def test_the_watchdog_limit_is_the_first_matching_size_tier(params_b, limit):
    assert GateConfig().seconds_per_prompt_limit(params_b) == limit


def test_without_an_open_tier_the_last_one_applies_to_bigger_models():
    gates = GateConfig(watchdog=[WatchdogTier(max_params_b=1, seconds_per_prompt=5),
                                 WatchdogTier(max_params_b=8, seconds_per_prompt=20)])
    assert [gates.seconds_per_prompt_limit(p) for p in (0.5, 3, 70)] == [5, 20, 20]


def test_the_shipped_demo_config_is_valid():
    cfg = load_config(DEMO)
    assert isinstance(cfg, DnaConfig) and cfg.dna.pre_agg_embed_dim is None and cfg.dna.dna_dim == 2048
