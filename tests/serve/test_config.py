"""serve/config.py: the `kind: serve` schema. Every refusal names the field; served ids are
unique across candidates and their LoRA adapters; YARD_API_KEY wins over the config's key."""
import pytest

from cluster.config import ConfigError, load_config, validate
from serve.config import API_KEY_ENV, CandidateConfig, LimitsConfig, ServeConfig


def check(data: dict) -> ServeConfig:
    return validate({"kind": "serve", **data}, ServeConfig, "serve.yaml")


def test_defaults_are_loopback_hf_and_modest_limits():
    cfg = check({"candidates": [{"id": "a", "path": "/models/a"}]})
    assert (cfg.host, cfg.port, cfg.api_key) == ("127.0.0.1", 8000, None)
    (cand,) = cfg.candidates
    assert (cand.engine, cand.num_replicas, cand.num_gpus) == ("hf", 1, 0.0)
    assert cfg.limits.chat_template_kwargs == ["enable_thinking"]


@pytest.mark.parametrize("data, match", [
    ({"candidates": []}, r"serve.yaml: candidates: \[\]: "),
    ({"candidates": [{"id": "a"}]}, r"serve.yaml: candidates.0: .*give exactly one of model .* or path"),
    ({"candidates": [{"id": "a", "model": "m", "path": "/p"}]}, r"candidates.0: .*give exactly one of model"),
    ({"candidates": [{"id": "a:b", "model": "m"}]}, r"candidates.0.id: 'a:b': .*':' separates LoRA adapters"),
    ({"candidates": [{"id": "-a", "model": "m"}]}, r"candidates.0.id: '-a': "),
    ({"candidates": [{"id": "a", "model": "m", "lora_adapters": {"bad name": "/x"}}]},
     r"candidates.0.lora_adapters: .*adapter name 'bad name'"),
    ({"candidates": [{"id": "a", "model": "m", "num_replicas": 2, "autoscaling": {}}]},
     r"candidates.0: .*give num_replicas or autoscaling, not both"),
    ({"candidates": [{"id": "a", "model": "m", "autoscaling": {"min_replicas": 3, "max_replicas": 2}}]},
     r"candidates.0.autoscaling: .*max_replicas 2 < min_replicas 3"),
    ({"candidates": [{"id": "a", "model": "m", "engine": "tgi"}]}, r"candidates.0.engine: 'tgi': not allowed \(allowed:"),
    ({"candidates": [{"id": "a", "model": "m"}], "port": 70000}, r"serve.yaml: port: 70000: .*\(allowed: le 65535\)"),
    ({"candidates": [{"id": "a", "model": "m"}], "limits": {"max_body_bytes": 10}}, r"limits.max_body_bytes: 10: "),
    ({"candidates": [{"id": "a", "model": "m"}], "limits": {"max_json_depth": 2}}, r"limits.max_json_depth: 2: "),
    ({"candidates": [{"id": "a", "model": "m"}], "colour": "red"}, r"serve.yaml: colour: 'red': .*\(unknown field\)"),
    ({"candidates": [{"id": "a", "model": "m"}, {"id": "b", "model": "m"}], "ingress": "colocated"},
     r"serve.yaml: ingress: 'colocated': puts one candidate's engine in the ingress replica; 2 candidates"),
])
def test_bad_values_name_the_field(data, match):
    with pytest.raises(ConfigError, match=match):
        check(data)


def test_served_ids_include_adapters_and_must_be_unique():
    cand = CandidateConfig(id="a", model="m", lora_adapters={"kr": "/ad/kr", "en": "/ad/en"})
    assert cand.served_ids() == ["a", "a:kr", "a:en"]
    with pytest.raises(ConfigError, match=r"candidate id 'a' is served twice"):
        check({"candidates": [{"id": "a", "model": "m"}, {"id": "a", "path": "/p"}]})


def test_autoscaling_alone_is_fine():
    cand = CandidateConfig(id="a", model="m", autoscaling={"min_replicas": 0, "max_replicas": 4})
    assert cand.autoscaling.max_replicas == 4 and cand.num_replicas == 1


def test_the_environment_key_wins_when_set(monkeypatch):
    cfg = check({"candidates": [{"id": "a", "model": "m"}], "api_key": "from-config"})
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert cfg.resolved_api_key() == "from-config"
    monkeypatch.setenv(API_KEY_ENV, "")  # empty: not set
    assert cfg.resolved_api_key() == "from-config"
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert cfg.resolved_api_key() == "from-env"


def test_path_only_candidates_need_no_registry():
    assert check({"candidates": [{"id": "a", "path": "/models/a"}]}).registry_paths() == []


def test_limits_defaults_offer_only_enable_thinking():
    limits = LimitsConfig()
    assert limits.max_tokens <= limits.max_prompt_tokens and limits.chat_template_kwargs == ["enable_thinking"]


def test_the_shipped_demo_config_is_valid():
    cfg = load_config("configs/serve.demo.yaml")
    assert isinstance(cfg, ServeConfig) and [c.id for c in cfg.candidates][:2] == ["llama-a", "qwen3-b"]


@pytest.mark.parametrize("ingress, candidates, expected", [
    ("auto", [{"engine": "vllm"}], "a"),                                # one vLLM candidate: in the ingress
    ("auto", [{}], None),                                               # one HF candidate: a replica of its own
    ("auto", [{"engine": "vllm"}, {"id": "b"}], None),                  # two behind the ingress
    ("auto", [{"engine": "vllm"}, {"id": "b", "engine": "vllm", "vllm_server": "ray-serve-llm"}], "a"),
    ("colocated", [{}], "a"),
    ("separate", [{"engine": "vllm"}], None),
])
def test_which_candidate_runs_in_the_ingress(ingress, candidates, expected):
    cfg = check({"ingress": ingress, "candidates": [{"id": "a", "path": "/m", **c} for c in candidates]})
    assert (cfg.colocated().id if cfg.colocated() else None) == expected
