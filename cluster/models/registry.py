"""The model registry (`configs/models.yaml` and the zoo's generated registry).

Each entry says where a model comes from and how it must be loaded; nothing about loading is
inferred from model size. `cluster.models.loading.decide_load` turns an entry plus the node's facts into
an explicit load plan, and rejects impossible loads before any weight is read.

    kind: models
    models:
      exaone-4.0-1.2b:
        source: LGAI-EXAONE/EXAONE-4.0-1.2B     # HF id, local path or s3://bucket/prefix
        revision: main
        family: exaone4
        params_b: 1.28
        dtype: bf16
        load_in: bf16
        min_cuda_capability: 8.0
        chat_template_kwargs: {enable_thinking: false}
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from cluster.config import ConfigError, YardModel, load_config

Architecture = Literal["llama", "qwen3", "exaone4", "qwen3_moe", "olmoe", "gemma", "mistral", "mixtral", "other"]
LoadIn = Literal["fp32", "bf16", "fp16", "8bit", "4bit"]
Dtype = Literal["fp32", "bf16", "fp16"]
Derivation = Literal[
    "base", "continued", "lora_merged", "pruned", "distilled", "quantized", "persona", "finetuned", "other"
]
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def source_kind(source: str) -> Literal["s3", "local", "hf"]:
    """`s3://...` is S3; an absolute, ./ or ../ path (or an existing one) is local; `org/name`
    is a Hugging Face id."""
    if source.startswith("s3://"):
        return "s3"
    if "://" in source:
        raise ValueError(f"source {source!r}: only HF ids, local paths and s3:// URIs are supported")
    if source.startswith(("/", "./", "../", "~")) or Path(source).exists():
        return "local"
    if _HF_ID.match(source):
        return "hf"
    raise ValueError(f"source {source!r} is neither an HF id (org/name), a local path, nor s3://")


class ModelSpec(YardModel):
    """One registered model."""

    source: str
    revision: str | None = None
    family: Architecture = "other"
    params_b: float = Field(gt=0, description="parameter count in billions")
    dtype: Dtype = "bf16"
    load_in: LoadIn = "bf16"
    num_gpus: int = Field(default=1, ge=1, description="GPUs the model needs; >1 means device_map='auto'")
    min_cuda_capability: float | None = Field(default=None, ge=3.0, le=20.0)
    trust_remote_code: bool = False
    chat_template_kwargs: dict[str, bool | int | float | str] = Field(default_factory=dict)
    # Lineage: how this model was made (the zoo and derived candidates fill these in).
    parent: str | None = None
    derivation: Derivation = "base"
    lineage_family: str | None = Field(default=None, description="the family (root ancestor) this model belongs to")
    identical_to: list[str] = Field(default_factory=list, description="ids declared identical (outlier gate)")
    notes: str = ""

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        source_kind(v)
        return v

    @property
    def source_kind(self) -> str:
        return source_kind(self.source)


class ModelsFile(YardModel):
    kind: Literal["models"] = "models"
    models: dict[str, ModelSpec]


class ModelRegistry:
    """Merged view of one or more registry files; ids must be unique across them."""

    def __init__(self, models: dict[str, ModelSpec], sources: dict[str, str] | None = None):
        self.models = models
        self.sources = sources or {}

    @classmethod
    def load(cls, paths: list[str | Path]) -> "ModelRegistry":
        models: dict[str, ModelSpec] = {}
        sources: dict[str, str] = {}
        for path in paths:
            mf = load_config(path, ModelsFile)
            for mid, spec in mf.models.items():
                if mid in models:
                    raise ConfigError(f"{path}: models.{mid}: already defined in {sources[mid]}")
                # A local source is relative to the registry file that names it.
                if spec.source_kind == "local" and not Path(spec.source).expanduser().is_absolute():
                    spec = spec.model_copy(update={"source": str((Path(path).parent / spec.source).resolve())})
                models[mid] = spec
                sources[mid] = str(path)
        return cls(models, sources)

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ConfigError(f"model {model_id!r}: unknown model id (registered: {known})") from None

    def ids(self) -> list[str]:
        return sorted(self.models)

    def check_ids(self, model_ids: list[str], source: str, field: str = "models.{i}") -> None:
        """Every id registered, else one line naming the config file and field (`{i}`: the id's
        index), before any work starts."""
        for i, mid in enumerate(model_ids):
            if not isinstance(mid, str) or mid not in self.models:
                known = ", ".join(sorted(self.models)[:12]) + (" ..." if len(self.models) > 12 else "")
                raise ConfigError(f"{source}: {field.format(i=i)}: {mid!r}: unknown model id "
                                  f"(registered: {known or 'none'})")

    def family_of(self, model_id: str) -> str:
        """The lineage family: declared, else the root of the parent chain."""
        seen = set()
        mid = model_id
        while True:
            spec = self.get(mid)
            if spec.lineage_family:
                return spec.lineage_family
            if not spec.parent or spec.parent not in self.models or mid in seen:
                return mid
            seen.add(mid)
            mid = spec.parent
