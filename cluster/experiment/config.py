"""`kind: experiment`: what runs, over which grid, with which resources and watch settings.

    kind: experiment
    name: exp0
    command: [python, experiments/exp0.py, --model, "{model}", --seed, "{seed}"]
    grid: {model: [llama, gemma], seed: [1, 2, 3]}
    exclude: [{model: gemma, seed: 3}]
    resources: {num_gpus: 1, gpu_memory_gib: 40}
    resources_for: [{when: {model: gemma}, gpu_memory_gib: 59}]
    stall_after_s: 600
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cluster.config import JobConfig, YardModel

DEFAULT_PROGRESS = r"(?P<done>\d+)\s*/\s*(?P<total>\d+)"  # "6/128" and tqdm's "6/128 [00:12<...]"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Resources(YardModel):
    """What one condition holds while it runs. With `gpu_memory_gib` and no `num_gpus`, conditions
    share a GPU where they fit (the share is what the node's GPU memory allows)."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float | None = Field(None, ge=0, description="fractional allowed; null: from gpu_memory_gib, else 0")
    memory_gib: float | None = Field(None, gt=0, description="host memory the condition needs")
    gpu_memory_gib: float | None = Field(None, gt=0, description="GPU memory the condition needs")
    accelerator_type: str | None = Field(None, description="Ray accelerator type, e.g. H100")
    min_cuda_capability: float | None = Field(None, gt=0)

    @field_validator("num_gpus")
    @classmethod
    def _whole_above_one(cls, v: float | None) -> float | None:
        if v is not None and v > 1 and v != int(v):
            raise ValueError(f"{v}: above 1 a condition takes whole GPUs")
        return v


class ResourcesFor(Resources):
    """Resources for the conditions matching `when` (a partial condition); unset fields keep the
    experiment's own."""

    when: dict[str, Any]


class ExperimentConfig(JobConfig):
    kind: Literal["experiment"] = "experiment"
    name: str = Field(..., description="the experiment's name: its folder in the store and its condition ids")
    command: list[str] | None = Field(None, description="argv with {axis} placeholders, run without a shell")
    function: str | None = Field(None, description="package.module:fn, called as fn(condition, ctx)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")
    workdir: str | None = Field(None, description="the command's working directory (default: where yard runs)")
    grid: dict[str, list[Any]] = Field(..., description="named axes; their product is the set of conditions")
    include: list[dict[str, Any]] = Field(default_factory=list, description="extra (partial) conditions")
    exclude: list[dict[str, Any]] = Field(default_factory=list, description="partial conditions to leave out")
    repeats: int = Field(1, ge=1, description="N > 1 adds a `repeat` axis 0..N-1")
    resources: Resources = Field(default_factory=Resources)
    resources_for: list[ResourcesFor] = Field(default_factory=list)
    progress: str | None = Field(DEFAULT_PROGRESS, description="regex giving done (and total) from an output line")
    phases: dict[str, str] = Field(default_factory=dict, description="regex -> phase name, e.g. {Loading: loading}")
    stall_after_s: float = Field(600.0, gt=0, description="a condition silent this long is killed and rerun")
    stall_retries: int = Field(1, ge=0)
    time_limit_s: float | None = Field(None, gt=0, description="a condition running this long is killed and failed")
    retries: int = Field(1, ge=0, description="reruns after an error; the same error twice stops at once")
    log_limit_kib: int = Field(4096, ge=4, description="a condition's log keeps this much: half head, half tail")
    registry: list[str] = Field(default_factory=list, description="unused by experiments; kept for JobConfig")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r}: letters, digits, '_', '.' and '-' only (at most 64)")
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not v:
            raise ValueError("empty: name at least one axis with at least one value")
        for axis, values in v.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", axis):
                raise ValueError(f"axis {axis!r}: a name of letters, digits and '_'")
            if not values:
                raise ValueError(f"{axis}: empty list (an empty axis makes an empty grid)")
            if axis == "repeat":
                raise ValueError("repeat: reserved (use repeats: N)")
        return v

    @field_validator("progress")
    @classmethod
    def _progress(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            pattern = re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regex: {exc}") from None
        if "done" not in pattern.groupindex and pattern.groups < 1:
            raise ValueError("needs a group for done: (?P<done>...) and optionally (?P<total>...)")
        return v

    @field_validator("phases")
    @classmethod
    def _phases(cls, v: dict[str, str]) -> dict[str, str]:
        for regex in v:
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"{regex!r}: not a regex: {exc}") from None
        return v

    @model_validator(mode="after")
    def _one_way(self) -> "ExperimentConfig":
        if (self.command is None) == (self.function is None):
            raise ValueError("command or function: give exactly one")
        if self.command is not None and not self.command:
            raise ValueError("command: empty argv")
        if self.function is not None and ":" not in self.function:
            raise ValueError(f"function: {self.function!r} is not package.module:fn")
        return self
