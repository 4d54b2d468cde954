"""vLLM candidates with `vllm_server: ray-serve-llm`: served by Ray Serve LLM (`LLMConfig`,
`build_openai_app`) in an app of its own, beside this project's ingress. (The default,
`vllm_server: yard`, serves them behind this project's ingress: `serve.engine_vllm`.)

`build_llm_config` turns a `CandidateConfig` into an `LLMConfig`: model id/source, deployment
(replicas or autoscaling), accelerator type, engine kwargs (dtype, max_model_len,
tensor_parallel_size = num_gpus, quantization for compressed-tensors dirs) and LoRA (vLLM loads
adapters on demand as "<id>:<name>" from one remote folder holding one subfolder per adapter).

`ray.serve.llm` imports vLLM's protocol models at import time, so it fails without vllm; its
`LLMConfig` is a thin subclass of the internal class, which imports without vllm: the config is
built (and unit-tested) everywhere, the app only where vllm is installed.

    >>> cfg = load_config("configs/serve.gpu.yaml")        # doctest: +SKIP
    >>> serve.run(build_vllm_app(cfg), route_prefix="/")    # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from cluster.config import ConfigError, UserError
from cluster.models.registry import ModelRegistry
from serve.config import CandidateConfig, ServeConfig

log = logging.getLogger(__name__)
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class VllmUnavailable(UserError, RuntimeError):
    """vLLM candidates were asked for where vllm is not installed."""


def llm_config_class():
    """`ray.serve.llm.LLMConfig` when it imports (vllm installed), else the internal class it
    subclasses without adding anything (same fields, same validation)."""
    try:
        from ray.serve.llm import LLMConfig
    except ImportError:
        from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
    return LLMConfig


def _model_source(candidate: CandidateConfig, registry: ModelRegistry | None, storage_uri: str) -> tuple[str, dict]:
    """(source vLLM reads, registry entry facts). Registry sources are HF ids, local dirs or s3://;
    a store-prefix path becomes an s3:// or local path of its model/ folder."""
    if candidate.model is not None:
        if registry is None:
            raise ConfigError(f"candidates.{candidate.id}.model: {candidate.model!r} needs a registry")
        spec = registry.get(candidate.model)
        # load_in is how the registry wants it computed on a GPU (8bit/4bit are bitsandbytes: vLLM decides)
        return spec.source, {"dtype": _DTYPES.get(spec.load_in, "auto"), "trust_remote_code": spec.trust_remote_code,
                             "revision": spec.revision}
    path = candidate.path
    if path.startswith("s3://") or Path(path).expanduser().exists():
        local = Path(path).expanduser()
        if (local / "model" / "config.json").is_file():
            return str((local / "model").resolve()), {}
        return (path if path.startswith("s3://") else str(local.resolve())), {}
    root = storage_uri.rstrip("/")
    return (f"{root}/{path.strip('/')}/model" if root.startswith("s3://")
            else str(Path(root).expanduser().resolve() / path.strip("/") / "model")), {}


def _quantization(source: str) -> str | None:
    """'compressed-tensors' for a local dir whose config.json says so (llm-compressor output)."""
    cfg = Path(source) / "config.json"
    if not cfg.is_file():
        return None
    qcfg = json.loads(cfg.read_text()).get("quantization_config") or {}
    return qcfg.get("quant_method") if qcfg.get("quant_method") == "compressed-tensors" else None


def _lora_root(candidate: CandidateConfig) -> str:
    """The one remote folder all adapters live in, as Ray Serve LLM needs ("<root>/<name>")."""
    roots = set()
    for name, where in candidate.lora_adapters.items():
        where = where.rstrip("/")
        parent, _, leaf = where.rpartition("/")
        if not where.startswith(("s3://", "gs://", "abfss://", "azure://")) or leaf != name:
            raise ConfigError(f"candidates.{candidate.id}.lora_adapters.{name}: {where!r}: the vLLM engine loads "
                              f"adapters from a remote folder named after the adapter (s3://.../{name})")
        roots.add(parent)
    if len(roots) > 1:
        raise ConfigError(f"candidates.{candidate.id}.lora_adapters: the vLLM engine needs every adapter under "
                          f"one folder (got {', '.join(sorted(roots))})")
    return roots.pop()


def build_llm_config(candidate: CandidateConfig, registry: ModelRegistry | None = None, *,
                     storage_uri: str = ".yard"):
    """The `LLMConfig` serving `candidate` with vLLM; ConfigError naming the field when it cannot."""
    source, facts = _model_source(candidate, registry, storage_uri)
    engine_kwargs: dict = {"dtype": candidate.dtype if candidate.dtype != "auto" else facts.get("dtype", "auto")}
    if candidate.num_gpus >= 1:
        if candidate.num_gpus != int(candidate.num_gpus):
            raise ConfigError(f"candidates.{candidate.id}.num_gpus: {candidate.num_gpus}: vLLM needs whole GPUs")
        engine_kwargs["tensor_parallel_size"] = int(candidate.num_gpus)
    if candidate.max_model_len is not None:
        engine_kwargs["max_model_len"] = candidate.max_model_len
    if facts.get("trust_remote_code"):
        engine_kwargs["trust_remote_code"] = True
    if facts.get("revision"):
        engine_kwargs["revision"] = facts["revision"]
    quant = _quantization(source)
    if quant:
        engine_kwargs["quantization"] = quant
    lora = None
    if candidate.lora_adapters:
        engine_kwargs["enable_lora"] = True
        lora = {"dynamic_lora_loading_path": _lora_root(candidate),
                "max_num_adapters_per_replica": max(1, len(candidate.lora_adapters))}
    engine_kwargs.update(candidate.engine_kwargs)  # the user's explicit kwargs win
    if candidate.autoscaling is not None:
        deployment = {"autoscaling_config": candidate.autoscaling.model_dump()}
    else:
        deployment = {"autoscaling_config": {"min_replicas": candidate.num_replicas,
                                             "max_replicas": candidate.num_replicas}}
    kwargs = dict(model_loading_config={"model_id": candidate.id, "model_source": source},
                  deployment_config=deployment, engine_kwargs=engine_kwargs, lora_config=lora)
    if candidate.accelerator_type:
        kwargs["accelerator_type"] = candidate.accelerator_type
    try:
        return llm_config_class()(**kwargs)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        first = str(exc).splitlines()
        raise ConfigError(f"candidates.{candidate.id}: Ray Serve LLM rejects it: "
                          f"{' '.join(first[1:3]) if len(first) > 2 else first[0]}") from None


def build_llm_configs(cfg: ServeConfig) -> list:
    """An LLMConfig per vLLM candidate of the config."""
    registry = ModelRegistry.load(cfg.registry_paths()) if cfg.registry_paths() else None
    return [build_llm_config(c, registry, storage_uri=cfg.storage.uri) for c in cfg.candidates if c.on_serve_llm]


def build_vllm_app(cfg: ServeConfig):
    """Ray Serve LLM's OpenAI app for the config's vLLM candidates; VllmUnavailable without vllm."""
    configs = build_llm_configs(cfg)
    try:
        import vllm  # noqa: F401
        from ray.serve.llm import build_openai_app
    except ImportError:
        ids = ", ".join(c.id for c in cfg.candidates if c.on_serve_llm)
        raise VllmUnavailable(f"candidates {ids}: engine vllm needs vllm (pip install 'modelyard[vllm]' on a GPU "
                              f"node) or engine: hf") from None
    return build_openai_app({"llm_configs": configs})
