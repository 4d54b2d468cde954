"""`kind: persona` configs: one persona fine-tune (prep, SFT, DPO, merge, probe), checked at load time.

    kind: persona
    name: seoyun
    base: qwen3-b                       # a registry id (a zoo model joins the zoo's lineage)
    prep: {data_dir: configs/persona/seoyun, held_out_fraction: 0.1}
    sft: {max_steps: 3}                 # the seed recipe's hyperparameters otherwise
    dpo: null                           # skip DPO
    resources: {sft: {num_gpus: 1, accelerator_type: H200}}

Every field defaults to the users' recipe (seed 001): LoRA r 64 / alpha 128, SFT 3 epochs at
1e-4, DPO 2 epochs at 5e-6, `enable_thinking: false`, and the seed's price and step-time table for
`yard persona CONFIG --plan`. The judge block is `serve.judge.judge.JudgeEndpoint`'s; it is checked
lazily (tune/ does not import serve/ at import time).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cluster.config import JobConfig, YardModel, resolve_config_path
from cluster.ops.jobs import REPO_ROOT
from tune.persona.data import PrepConfig
from tune.persona.train import DpoSettings, LoraSettings, SftSettings

STAGES = ("sft", "dpo")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

# Seed 001's table: RunPod Secure Cloud USD/hour per GPU type.
SEED_PRICES = {"H200 SXM5": 3.99, "H100 SXM5": 3.49, "H100 PCIe": 2.49}
# Seed 001: ~3 s per SFT step and ~5 s per DPO step on an H200 for a 9B QLoRA at the recipe's batch
# shapes; H100 SXM5 / PCIe scaled by the seed's whole-run wallclocks (0.75 h : 1.0 h : 1.5 h).
SEED_SEC_PER_STEP = {
    "H200 SXM5": {"sft": 3.0, "dpo": 5.0},
    "H100 SXM5": {"sft": 3.0 * 1.0 / 0.75, "dpo": 5.0 * 1.0 / 0.75},
    "H100 PCIe": {"sft": 3.0 * 1.5 / 0.75, "dpo": 5.0 * 1.5 / 0.75},
}


class StageResources(YardModel):
    """What one stage's Ray task asks for."""

    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(1.0, ge=0, description="0: train on CPU (the demo)")
    accelerator_type: str | None = Field(None, description="Ray accelerator type, e.g. H200, H100, A100")


class ResourcesConfig(YardModel):
    sft: StageResources = Field(default_factory=StageResources)
    dpo: StageResources = Field(default_factory=StageResources)
    merge: StageResources = Field(default_factory=lambda: StageResources(num_gpus=0))
    # the Serve replica that answers the probes (a merged 9B needs a GPU to answer in time)
    probe: StageResources = Field(default_factory=StageResources)


class MergeConfig(YardModel):
    dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="the merged model's 16-bit (or fp32) weights")


class GgufConfig(YardModel):
    """GGUF export with llama.cpp, skipped with a clear message where llama.cpp is not found."""

    enabled: bool = False
    quants: list[str] = Field(default_factory=lambda: ["q4_k_m"], min_length=1)


class ProbeSettings(YardModel):
    """The persona probe suite on the merged model, with and without the system prompt."""

    enabled: bool = True
    suite: str = "configs/probes.persona.yaml"
    # serve.judge.judge.JudgeEndpoint fields; null = rule checks only; {replay: true} = deterministic
    # fake ratings (no judge model runs on a CPU machine; such scores measure nothing).
    judge: dict | None = None
    max_tokens: int = Field(200, ge=1, description="reply length per probe turn")
    # The base answers the same probes in the same Serve app, so the report shows what the
    # fine-tune changed. Where the cluster lacks GPUs for two probe replicas they share them.
    compare_base: bool = Field(True, description="probe the base too: base and child side by side in the report")

    @field_validator("judge")
    @classmethod
    def _judge(cls, v: dict | None) -> dict | None:
        if v is None:
            return None
        from serve.judge.judge import JudgeEndpoint  # lazily: tune/ never imports serve/ at import time

        return JudgeEndpoint.model_validate(v).model_dump()


class PlanConfig(YardModel):
    """Price and step-time table of `--plan`; defaults are seed 001's figures.

    `sec_per_step` holds for the recipe's batch shapes (SFT 16 x 2 x 1024 tokens, DPO 4 x 2 x 1024);
    other shapes scale linearly in tokens per optimizer step (tune/persona/plan.py)."""

    gpu_type: str = Field("H200 SXM5", description="the type the run's actual cost is priced at")
    prices: dict[str, float] = Field(default_factory=lambda: dict(SEED_PRICES), description="USD per GPU-hour")
    sec_per_step: dict[str, dict[str, float]] = Field(default_factory=lambda: {k: dict(v) for k, v in SEED_SEC_PER_STEP.items()})
    load_s: float = Field(180.0, ge=0, description="first model load incl. download (SFT task)")
    reload_s: float = Field(30.0, ge=0, description="a later stage's load, weights cached on the node")
    # Seed: merge + the first GGUF quant ~10 min (llama.cpp is compiled once), ~3 min per further quant.
    merge_s: float = Field(120.0, ge=0, description="merging the adapter into 16-bit weights")
    gguf_setup_s: float = Field(300.0, ge=0, description="once, when GGUF is enabled: building llama.cpp")
    gguf_s: float = Field(180.0, ge=0, description="per GGUF quant")

    @model_validator(mode="after")
    def _tables(self) -> "PlanConfig":
        for gpu, price in self.prices.items():
            if price < 0:
                raise ValueError(f"prices.{gpu}: {price} < 0")
            steps = self.sec_per_step.get(gpu)
            if steps is None:
                raise ValueError(f"sec_per_step: no entry for {gpu!r} (every priced GPU type needs sft and dpo)")
            for stage in STAGES:
                if not isinstance(steps.get(stage), (int, float)) or steps[stage] <= 0:
                    raise ValueError(f"sec_per_step.{gpu}.{stage}: missing or not > 0")
        if self.gpu_type not in self.prices:
            raise ValueError(f"gpu_type: {self.gpu_type!r} is not priced (allowed: {', '.join(self.prices)})")
        return self


class PersonaConfig(JobConfig):
    """`yard persona CONFIG`: prep -> SFT -> DPO -> merge (+ GGUF) -> lineage -> probe."""

    kind: Literal["persona"] = "persona"
    name: str = Field("persona", pattern=_NAME, description="run name (store key, child model id suffix)")
    base: str = Field(..., description="registry id of the model to fine-tune")
    prep: PrepConfig
    lora: LoraSettings = Field(default_factory=LoraSettings)
    sft: SftSettings = Field(default_factory=SftSettings)
    dpo: DpoSettings | None = Field(default_factory=DpoSettings, description="null: SFT only")
    # Applied in training (rendered targets) and inference (probes): the seed trains without think tags.
    chat_template_kwargs: dict[str, bool | int | float | str] = Field(default_factory=lambda: {"enable_thinking": False})
    merge: MergeConfig = Field(default_factory=MergeConfig)
    gguf: GgufConfig = Field(default_factory=GgufConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    plan: PlanConfig = Field(default_factory=PlanConfig)
    register_child: bool = Field(True, description="a zoo base gets the merged model as a child (local store)")
    child_id: str | None = Field(None, pattern=_NAME, description="the child's registry id (default <base>.<name>)")
    stall_after_s: float = Field(1800.0, gt=0, description="a training stage with no heartbeat (a step) for "
                                 "this long is killed")
    load_stall_after_s: float = Field(1800.0, gt=0, description="the limit while a stage starts, loads its model "
                                      "and builds its trainer (before its first step), as the DNA hosts' load limit")
    stall_retries: int = Field(1, ge=0, le=5, description="a stage killed at its stall limit reruns in a fresh "
                               "process up to this many times")

    @property
    def resolved_child_id(self) -> str:
        return self.child_id or f"{self.base}.{self.name}".replace("/", "-")

    def resolve_path(self, path: str) -> Path:
        """A path this config names (`cluster.config.resolve_config_path`), the repository last:
        `yard demo` runs from anywhere."""
        return resolve_config_path(path, self.config_file, roots=(REPO_ROOT,))
