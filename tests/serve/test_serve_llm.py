"""serve/serve_llm.py: the Ray Serve LLM `LLMConfig` built for a candidate (fields), and the
vLLM app itself only where vllm and a GPU exist."""
import importlib.util
import json

import pytest

from cluster.config import ConfigError
from cluster.models.registry import ModelRegistry
from serve.config import CandidateConfig, ServeConfig
from serve.serve_llm import VllmUnavailable, build_llm_config, build_vllm_app


@pytest.fixture(scope="module")
def registry(zoo):
    return ModelRegistry.load([zoo.registry_path])


def _cand(**kw):
    return CandidateConfig(**{"id": "exa", "model": "exaone4-c", "engine": "vllm", **kw})


def test_fields_from_registry_and_candidate(registry, zoo):
    cfg = build_llm_config(_cand(num_gpus=2, max_model_len=4096, accelerator_type="H100",
                                 autoscaling={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16}),
                           registry)
    assert cfg.model_loading_config.model_id == "exa"
    assert cfg.model_loading_config.model_source == str((zoo.zoo_dir / "exaone4-c").resolve())
    assert cfg.engine_kwargs == {"dtype": "bfloat16", "tensor_parallel_size": 2, "max_model_len": 4096}
    assert cfg.deployment_config["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4,
                                                           "target_ongoing_requests": 16.0}
    assert cfg.accelerator_type == "H100" and cfg.lora_config is None


def test_fixed_replicas_and_user_engine_kwargs_win(registry):
    cfg = build_llm_config(_cand(num_replicas=3, dtype="float16", engine_kwargs={"gpu_memory_utilization": 0.8,
                                                                                 "dtype": "auto"}), registry)
    assert cfg.deployment_config["autoscaling_config"] == {"min_replicas": 3, "max_replicas": 3}
    assert cfg.engine_kwargs["dtype"] == "auto" and cfg.engine_kwargs["gpu_memory_utilization"] == 0.8
    assert "tensor_parallel_size" not in cfg.engine_kwargs  # num_gpus 0: vLLM's own default


def test_lora_adapters_share_one_remote_folder(registry):
    cfg = build_llm_config(_cand(num_gpus=1, lora_adapters={"kate": "s3://b/adapters/kate",
                                                            "seoyun": "s3://b/adapters/seoyun/"}), registry)
    assert cfg.engine_kwargs["enable_lora"] is True
    assert cfg.lora_config.dynamic_lora_loading_path == "s3://b/adapters"
    assert cfg.lora_config.max_num_adapters_per_replica == 2
    with pytest.raises(ConfigError, match="lora_adapters.kate: .*remote folder named after the adapter"):
        build_llm_config(_cand(lora_adapters={"kate": "/local/kate"}), registry)
    with pytest.raises(ConfigError, match="under one folder"):
        build_llm_config(_cand(lora_adapters={"a": "s3://b/x/a", "b": "s3://b/y/b"}), registry)


def test_compressed_tensors_dir_sets_quantization(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(
        {"quantization_config": {"quant_method": "compressed-tensors", "format": "pack-quantized"}}))
    cfg = build_llm_config(CandidateConfig(id="w4", path=str(tmp_path), engine="vllm", num_gpus=1))
    assert cfg.model_loading_config.model_source == str((tmp_path / "model").resolve())
    assert cfg.engine_kwargs["quantization"] == "compressed-tensors"


def test_store_prefix_path_points_at_its_model_folder():
    cfg = build_llm_config(CandidateConfig(id="t3", path="sweep/demo/run/trial-3", engine="vllm"),
                           storage_uri="s3://bucket/yard")
    assert cfg.model_loading_config.model_source == "s3://bucket/yard/sweep/demo/run/trial-3/model"


@pytest.mark.parametrize("kw, match", [
    ({"accelerator_type": "Z80"}, "Unsupported accelerator type"),
    ({"num_gpus": 1.5}, "num_gpus: 1.5: vLLM needs whole GPUs"),
])
def test_bad_candidates_fail_with_one_line(registry, kw, match):
    with pytest.raises(ConfigError, match=match):
        build_llm_config(_cand(**kw), registry)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_app_without_vllm_is_a_user_error(zoo):
    cfg = ServeConfig(registry=[str(zoo.registry_path)], candidates=[_cand(vllm_server="ray-serve-llm")])
    with pytest.raises(VllmUnavailable, match="candidates exa: engine vllm needs vllm"):
        build_vllm_app(cfg)


def _has_gpu() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not _has_gpu(),
                    reason="serving through vLLM needs the vllm extra and a CUDA GPU; this machine has "
                           "neither (the LLMConfig it would use is tested above)")
def test_vllm_app_builds(zoo):
    cfg = ServeConfig(registry=[str(zoo.registry_path)],
                      candidates=[_cand(num_gpus=1, max_model_len=256, vllm_server="ray-serve-llm")])
    assert build_vllm_app(cfg) is not None
