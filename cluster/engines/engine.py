"""One engine choice for every capability: `engine: hf | vllm`.

`EngineConfig` is declared here once and used as is by the DNA job (`engine:`), the sweep
(`eval.engine:`) and Serve candidates (`engine:`): the same field, the same settings, the same
refusals. A string is enough (`engine: vllm`); the vLLM settings sit under it when needed:

    engine: {name: vllm, vllm: {gpu_memory_utilization: 0.8, enforce_eager: true}}

`hf` (transformers, the default) runs everywhere and is the reference; `vllm` needs a CUDA GPU
and vLLM, an optional extra that cannot share an environment with llmcompressor. Which vLLM goes
with which torch (a vLLM wheel is built for exactly one torch):

| vLLM | torch | note |
|---|---|---|
| 0.26 | 2.11 | the GPU machine's torch; proven there (`../shared/device/vllm/`) |
| 0.27 | 2.13 | this project's CPU torch |
| 0.29 | - | pinned by `ray[llm]` 2.60 (Ray Serve LLM) |
| 0.33 | 2.14 | `pip install 'modelyard[vllm]'` |

The code keeps to the vLLM API that 0.26 through 0.33 share: `LLM(...)`, `SamplingParams`,
token-id prompts, `RequestOutput.outputs[0].token_ids`.

    >>> EngineConfig.model_validate("vllm").name
    'vllm'
    >>> check_engine(EngineConfig(), "engine")      # hf: nothing to check
"""
from __future__ import annotations

import gc
import importlib.util
from contextlib import contextmanager
from importlib import metadata
from typing import Literal

from pydantic import Field, model_validator

from cluster.config import UserError, YardModel

EngineName = Literal["hf", "vllm"]
VLLM_TORCH = {"0.26": "2.11", "0.27": "2.13", "0.33": "2.14"}
VLLM_TESTED = ("0.26", "0.33")  # the API range the code keeps to


class EngineUnavailable(UserError, RuntimeError):
    """A config asks for an engine this node (or cluster) cannot run: one line, exit 2."""


class VllmSettings(YardModel):
    """vLLM engine settings (ignored by the hf engine)."""

    gpu_memory_utilization: float = Field(0.85, gt=0, le=0.98, description="fraction of each GPU vLLM may take "
                                          "(weights + KV cache)")
    max_model_len: int | None = Field(4096, ge=16, description="context length the KV cache is sized for; null = "
                                      "the model's own (large: fewer sequences fit)")
    max_num_seqs: int = Field(256, ge=1, description="sequences decoded together (the batch)")
    enforce_eager: bool = Field(False, description="skip torch.compile and CUDA graphs: starts ~20-40 s sooner, "
                                "decodes slower; worth it when a model generates only a few seconds")
    in_process: bool = Field(False, description="run the engine in the host's own process (~30-60 s less per model: "
                             "no child process re-importing vLLM); vLLM 0.26 could not start a second engine in a "
                             "process after releasing the first (CUDA caching allocator assert, H200), so the default "
                             "runs each model's engine in a child process whose exit returns all its GPU memory")
    reuse_engine: bool = Field(True, description="a model with the previous one's architecture config, tokenizer and "
                               "generation config gets its weights loaded into the running engine (seconds) instead "
                               "of a new engine (30-90 s); every cached prefix is dropped first")
    multicast_all_reduce: bool = Field(False, description="tensor parallel only: let vLLM fuse all-reduce with "
                                       "RMSNorm through FlashInfer's multicast ('mnnvl') all-reduce; off by default: "
                                       "where NVLink multicast is off (shared machines) it crashed vLLM 0.26's "
                                       "workers with an illegal memory access")
    seed: int = Field(0, ge=0)
    engine_kwargs: dict = Field(default_factory=dict, description="extra vllm.LLM kwargs (win over derived ones)")


class EngineConfig(YardModel):
    """Which engine generates: `hf` (transformers; CPU and GPU) or `vllm` (CUDA GPUs)."""

    name: EngineName = "hf"
    vllm: VllmSettings = Field(default_factory=VllmSettings)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data):
        return {"name": data} if isinstance(data, str) else data


def vllm_version() -> str | None:
    """The installed vLLM's version, or None (without importing it: an import takes ~20 s)."""
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        return metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return "unknown"


def engine_version(name: str) -> str:
    """"hf transformers X" or "vllm X": what provenance and reports record."""
    if name == "vllm":
        return f"vllm {vllm_version()}"
    return f"hf transformers {metadata.version('transformers')}"


def local_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_engine(engine: EngineConfig, field: str, *, gpus: int | None = None, source: str = "") -> None:
    """Refuse, before any work, an engine this place cannot run: `field` names the config field.
    `gpus`: GPUs the job can use (a Ray cluster's count); default this node's."""
    if engine.name == "hf":
        return
    where = f"{source}: " if source else ""
    if vllm_version() is None:
        pairs = ", ".join(f"{v} with torch {t}" for v, t in VLLM_TORCH.items())
        raise EngineUnavailable(f"{where}{field}: vllm is not installed here (install the vllm extra in an "
                                f"environment of its own; vLLM {pairs})")
    count = local_gpu_count() if gpus is None else gpus
    if count < 1:
        raise EngineUnavailable(f"{where}{field}: vllm needs a CUDA GPU and there is none here "
                                f"(use engine: hf on CPU)")


@contextmanager
def gc_paused():
    """Garbage collection off for the block, as timeit does, and back on after (if it was on). Where a
    generation is timed, a collection pass belongs to whichever model it happens to hit; a full pass
    walks every object of the process, so a process that has loaded more (a trial process after its
    training, a warm host after many models) would pay more for the same generation."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
