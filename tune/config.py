"""`kind: sweep` configs: one compression recipe search, validated before any trial starts.

    kind: sweep
    name: demo
    base: exaone4-c
    search:
      space:
        prune_depth: {grid: [0, 1, 2]}
        kd_samples: {grid: [0, 32]}
        lora_rank: {choice: [0, 8]}
        quant: {value: none}

A search dimension is one of `grid` (every value, crossed with the other grids), `choice` (sampled),
`randint` [lo, hi] (inclusive), `uniform` / `loguniform` [lo, hi], or `value` (fixed). Optuna cannot
take grids; grid and random can. Every value a dimension can take is checked here (field names in
the error), and against the base model and the hardware in `tune.sweep.sweep.validate` before Ray Tune
starts.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from cluster.capacity.ledger import unit_resources
from cluster.config import JobConfig, YardModel
from tune.compress.quantize import SCHEMES
from tune.eval.evaluate import EvalConfig
from tune.sweep.timing import TimingConfig

DIMENSIONS = ("prune_depth", "kd_samples", "lora_rank", "quant", "ffn_keep_ratio")
_INT_DIMS = ("prune_depth", "kd_samples", "lora_rank")


class Dimension(YardModel):
    """One search dimension: exactly one of the fields."""

    grid: list[Any] | None = Field(None, min_length=1)
    choice: list[Any] | None = Field(None, min_length=1)
    randint: tuple[int, int] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    value: Any = None

    @model_validator(mode="after")
    def _one(self) -> "Dimension":
        given = [k for k in ("grid", "choice", "randint", "uniform", "loguniform", "value") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, randint, uniform, loguniform, value (got {given or 'none'})")
        for k in ("randint", "uniform", "loguniform"):
            lo_hi = getattr(self, k)
            if lo_hi is not None and not lo_hi[0] <= lo_hi[1]:
                raise ValueError(f"{k}: low {lo_hi[0]} > high {lo_hi[1]}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "randint", "uniform", "loguniform", "value") if getattr(self, k) is not None)

    def values(self) -> list[Any]:
        """The values to check: every listed value, or the bounds of a range."""
        kind = self.kind
        if kind in ("grid", "choice"):
            return list(getattr(self, kind))
        if kind == "value":
            return [self.value]
        return list(getattr(self, kind))

    def upper(self) -> Any:
        return max(self.values())

    def to_tune(self):
        from ray import tune

        kind = self.kind
        if kind == "grid":
            return tune.grid_search(list(self.grid))
        if kind == "choice":
            return tune.choice(list(self.choice))
        if kind == "randint":
            return tune.randint(self.randint[0], self.randint[1] + 1)  # tune's upper bound is exclusive
        if kind == "uniform":
            return tune.uniform(*self.uniform)
        if kind == "loguniform":
            return tune.loguniform(*self.loguniform)
        return self.value


class SearchSpace(YardModel):
    """The recipe dimensions; a dimension left out takes its default value."""

    prune_depth: Dimension = Field(default_factory=lambda: Dimension(value=0), description="decoder layers removed")
    kd_samples: Dimension = Field(default_factory=lambda: Dimension(value=0), description="calibration texts distilled on")
    lora_rank: Dimension = Field(default_factory=lambda: Dimension(value=0), description="LoRA heal rank (0: none)")
    quant: Dimension = Field(default_factory=lambda: Dimension(value="none"), description=f"one of {', '.join(SCHEMES)}")
    ffn_keep_ratio: Dimension = Field(default_factory=lambda: Dimension(value=1.0), description="MLP width kept")

    @model_validator(mode="after")
    def _values(self) -> "SearchSpace":
        for name in _INT_DIMS:
            for v in getattr(self, name).values():
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"{name}: {v!r} is not an integer >= 0")
        for v in self.quant.values():
            if v not in SCHEMES:
                raise ValueError(f"quant: {v!r} is not a quantization scheme (allowed: {', '.join(SCHEMES)})")
        if self.quant.kind in ("randint", "uniform", "loguniform"):
            raise ValueError(f"quant: a {self.quant.kind} range makes no sense for a scheme; use grid or choice")
        for v in self.ffn_keep_ratio.values():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise ValueError(f"ffn_keep_ratio: {v!r} is not in (0, 1]")
        return self

    def dims(self) -> dict[str, Dimension]:
        return {name: getattr(self, name) for name in DIMENSIONS}

    def to_tune(self) -> dict:
        return {name: dim.to_tune() for name, dim in self.dims().items()}

    def grid_size(self) -> int:
        n = 1
        for dim in self.dims().values():
            if dim.kind == "grid":
                n *= len(dim.grid)
        return n


class AshaConfig(YardModel):
    """ASHA early stopping on the validation LM loss reported after each pipeline stage
    (1 prune, 2 distil, 3 heal, 4 quantize + evaluate)."""

    enabled: bool = False
    grace_period: int = Field(2, ge=1, le=3, description="stage after which trials are first compared")
    reduction_factor: float = Field(2.0, gt=1)


class SearchConfig(YardModel):
    space: SearchSpace = Field(default_factory=SearchSpace)
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(1, ge=1, description="repeats of the grid (grid/random) or Optuna trials")
    seed: int = 0
    asha: AshaConfig = Field(default_factory=AshaConfig)
    max_concurrent_trials: int = Field(2, ge=1)
    trial_time_limit_s: float | None = Field(None, gt=0, description="a trial running longer than this is killed "
                                             "and counted an error (not retried); none: no limit")
    stall_retries: int = Field(1, ge=0, le=5, description="a trial killed at its stall limit (no heartbeat for "
                               "stall_after_s) reruns in a fresh process up to this many times")

    @model_validator(mode="after")
    def _algorithm(self) -> "SearchConfig":
        grids = [n for n, d in self.space.dims().items() if d.kind == "grid"]
        if self.algorithm == "optuna" and grids:
            raise ValueError(f"space: Optuna cannot search grids ({', '.join(grids)}); use choice, randint or uniform")
        return self

    def trial_count(self) -> int:
        if self.algorithm == "optuna":
            return self.num_samples
        return self.space.grid_size() * self.num_samples


class ResourcesConfig(YardModel):
    """What one trial asks Ray for; a fraction of a GPU packs small models onto one device."""

    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0, description="e.g. 0.25: four trials share one GPU")
    reuse_trial_process: bool = Field(True, description="a finished trial's process (imports, CUDA context) "
                                      "runs the next trial (Tune's reuse_actors); false: every trial a new process")

    @model_validator(mode="after")
    def _gpus(self) -> "ResourcesConfig":
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ValueError(f"gpus_per_trial: {self.gpus_per_trial} (a fraction must be < 1, or a whole number)")
        return self

    def ledger_resources(self) -> dict:
        """What one trial holds, as ledger fields (`cluster.capacity.ledger.unit_resources`) at the cluster's
        GPU type; both sweeps' ledgers book their trials on it."""
        return unit_resources(self.gpus_per_trial, self.cpus_per_trial)


class CalibrationConfig(YardModel):
    """Texts for Block Influence, KD, the LoRA heal, GPTQ and the validation loss."""

    source: str = Field("zoo:weather,food", description="zoo:<topics> (the zoo corpus), or a .txt (blank-line "
                        "separated) / .jsonl (a `text` field per line) file")
    count: int = Field(64, ge=1, description="texts used for BI, KD, heal and GPTQ (kd_samples <= count)")
    holdout: int = Field(8, ge=1, description="further texts for the validation loss ASHA watches")
    max_length: int = Field(128, ge=8)


class PruneConfig(YardModel):
    variant: Literal["cosine", "angular"] = "cosine"
    consecutive: bool = Field(False, description="remove the lowest-BI consecutive block instead of the lowest k")


class KdConfig(YardModel):
    temperature: float = Field(2.0, gt=0)
    top_k: int = Field(32, ge=1)
    steps: int = Field(40, ge=1)
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(4, ge=1)


class HealConfig(YardModel):
    steps: int = Field(30, ge=1)
    lr: float = Field(2e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    alpha_per_rank: float = Field(2.0, gt=0, description="LoRA alpha = alpha_per_rank x rank")


class QuantConfig(YardModel):
    num_calibration_samples: int = Field(32, ge=1)
    max_seq_length: int = Field(128, ge=8)
    python: str | None = Field(None, description="interpreter of another environment, with llmcompressor, that "
                               "quantizes in a child process (tune.compress.quantize.quantize_elsewhere); for trials whose "
                               "own environment holds vLLM, which cannot share one with llmcompressor. null: in "
                               "the trial's own process")


class SweepConfig(JobConfig):
    kind: Literal["sweep"] = "sweep"
    name: str = Field("sweep", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="sweep name (store key)")
    base: str = Field(..., description="registry id of the model to compress")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    kd: KdConfig = Field(default_factory=KdConfig)
    heal: HealConfig = Field(default_factory=HealConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    eval: EvalConfig
    search: SearchConfig = Field(default_factory=SearchConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    register_top: int = Field(3, ge=0, description="the best N candidates join the zoo's lineage as children of "
                              "the base (zoo bases, local store), so `yard dna` can place them; 0: none")
    timing: TimingConfig = Field(default_factory=TimingConfig, description="the Score's speed half: every model "
                                 "timed alone after the trials, interleaved and repeated (tune/sweep/timing.py)")
    stall_after_s: float = Field(900.0, gt=0, description="a trial with no heartbeat (a step, a batch) for this "
                                 "long is killed")
    load_stall_after_s: float = Field(1800.0, gt=0, description="the limit while a trial starts and loads its base "
                                      "(before its first step), as the DNA hosts' load limit")

    @model_validator(mode="after")
    def _kd_within_calibration(self) -> "SweepConfig":
        top = self.search.space.kd_samples.upper()
        if top > self.calibration.count:
            raise ValueError(f"search.space.kd_samples: {top} > calibration.count {self.calibration.count} "
                             f"(distillation uses the calibration texts)")
        return self
