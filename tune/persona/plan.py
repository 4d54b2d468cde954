"""Plan before launch: optimizer steps per stage, and a wallclock and cost projection per GPU type.

    plan = make_plan(cfg, sft_examples=1886, dpo_pairs=180)
    print(plan_markdown(plan))          # what `yard persona CONFIG --plan` prints
    print(actual_markdown(plan, {"sft": 700.0, "dpo": 250.0, "merge": 90.0}))   # the report's table

Steps follow seed 001's arithmetic: examples x epochs / (batch x accumulation), rounded up
(1,886 x 3 / 32 = 177 SFT steps; 180 x 2 / 8 = 45 DPO steps), or `max_steps` when set. trl's
trainer rounds per epoch, so its count can differ by one per epoch; the report shows the steps
the trainer really ran beside the projection.

A step's time is the price table's `sec_per_step` for the recipe's batch shape (SFT 16 x 2 x 1024
tokens, DPO 4 x 2 x 1024), scaled linearly in tokens per optimizer step for other shapes. Where the
store holds a finished run of the same base and LoRA on a GPU of a priced type, that run's measured
step time replaces the table's for that type (`measured_step_times`), and the plan says so.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from tune.persona.config import PersonaConfig

# Tokens per optimizer step (batch x accumulation x max_length) the seed's step times were quoted at.
SEED_TOKENS_PER_STEP = {"sft": 16 * 2 * 1024, "dpo": 4 * 2 * 1024}


def stage_steps(examples: int, epochs: float, batch_size: int, grad_accum: int, max_steps: int | None = None) -> int:
    """Optimizer steps of one stage: `max_steps` when set, else ceil(examples x epochs / effective batch)."""
    if examples < 0 or batch_size < 1 or grad_accum < 1 or epochs <= 0:
        raise ValueError(f"stage_steps: bad arguments (examples {examples}, epochs {epochs}, "
                         f"batch {batch_size}, accumulation {grad_accum})")
    if examples == 0:
        return 0
    if max_steps is not None:
        return int(max_steps)
    return math.ceil(examples * epochs / (batch_size * grad_accum))


def cost_usd(seconds: float, usd_per_hour: float) -> float:
    return seconds / 3600.0 * usd_per_hour


@dataclass
class StagePlan:
    stage: str
    examples: int
    epochs: float
    effective_batch: int
    max_length: int
    steps: int
    # the stage's tokens per step over the seed's shape: how much the table's step time is scaled
    step_scale: float


@dataclass
class Projection:
    """One GPU type's projection: seconds per part of the job and the cost at its price."""

    gpu_type: str
    usd_per_hour: float
    seconds: dict[str, float] = field(default_factory=dict)  # sft, dpo, merge (each incl. its load)

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    @property
    def cost_usd(self) -> float:
        return cost_usd(self.total_s, self.usd_per_hour)


@dataclass
class Measured:
    """A stage's step time measured in an earlier run, at the seed's batch shape."""

    sec_per_step: float
    run: str      # the run's store prefix
    device: str   # the CUDA device it ran on
    backend: str


@dataclass
class Plan:
    stages: list[StagePlan]
    projections: list[Projection]
    gpu_type: str  # the type the run's actual cost is priced at
    measured: dict[str, dict[str, Measured]] = field(default_factory=dict)  # GPU type -> stage -> measurement

    def stage(self, name: str) -> StagePlan | None:
        return next((s for s in self.stages if s.stage == name), None)

    def projection(self, gpu_type: str) -> Projection:
        return next(p for p in self.projections if p.gpu_type == gpu_type)

    def to_dict(self) -> dict:
        return {"gpu_type": self.gpu_type, "stages": [asdict(s) for s in self.stages],
                "measured": {gpu: {st: asdict(m) for st, m in by.items()} for gpu, by in self.measured.items()},
                "projections": [{**asdict(p), "total_s": round(p.total_s, 1), "cost_usd": round(p.cost_usd, 2)}
                                for p in self.projections]}


def gpu_type_of(device: str, gpu_types) -> str | None:
    """The priced GPU type a CUDA device name is: every word of the type in the name ("NVIDIA H100
    PCIe" is "H100 PCIe"), else the one type whose first word is in it ("NVIDIA H200" is "H200 SXM5")."""
    words = device.upper().split()
    full = [t for t in gpu_types if all(w in words for w in t.upper().split())]
    first = [t for t in gpu_types if t.upper().split()[0] in words]
    return full[0] if len(full) == 1 else first[0] if len(first) == 1 else None


def measured_step_times(store, cfg: PersonaConfig) -> dict[str, dict[str, Measured]]:
    """{GPU type: {stage: Measured}} from the newest finished persona runs in `store` with the same
    base, LoRA rank and QLoRA setting as `cfg`, on a GPU of a type `cfg.plan` prices. Step times are
    brought to the seed's batch shape with the run's own scale, as the price table's are."""
    found: dict[str, dict[str, tuple[str, Measured]]] = {}
    for name in store.model_ids("persona"):
        for run in store.runs("persona", name):
            if not run.ok or not store.exists(f"{run.prefix}/summary.json"):
                continue
            summary = store.get_json(f"{run.prefix}/summary.json")
            lora = summary.get("lora") or {}
            if (summary.get("base") != cfg.base or lora.get("r") != cfg.lora.r
                    or lora.get("qlora", True) != cfg.lora.qlora):
                continue
            scales = {s["stage"]: s["step_scale"] for s in summary.get("plan", {}).get("stages", [])}
            for st in summary.get("stages") or []:
                gpu = gpu_type_of(st.get("device") or "cpu", cfg.plan.prices)
                if gpu is None or not st.get("steps") or not scales.get(st["stage"]):
                    continue
                m = Measured(st["seconds"] / st["steps"] / scales[st["stage"]], run.prefix, st["device"],
                             st.get("backend", ""))
                if run.name >= found.get(gpu, {}).get(st["stage"], ("",))[0]:
                    found.setdefault(gpu, {})[st["stage"]] = (run.name, m)
    return {gpu: {stage: m for stage, (_, m) in by.items()} for gpu, by in found.items()}


def make_plan(cfg: PersonaConfig, sft_examples: int, dpo_pairs: int,
              measured: dict[str, dict[str, Measured]] | None = None) -> Plan:
    """Steps per stage from the dataset size after prep, and each priced GPU type's projection;
    `measured` step times (`measured_step_times`) replace the price table's where given."""
    stages = []
    settings = {"sft": cfg.sft, "dpo": cfg.dpo}
    counts = {"sft": sft_examples, "dpo": dpo_pairs}
    for name in ("sft", "dpo"):
        s = settings[name]
        if s is None:
            continue
        steps = stage_steps(counts[name], s.epochs, s.batch_size, s.grad_accum, s.max_steps)
        scale = s.batch_size * s.grad_accum * s.max_length / SEED_TOKENS_PER_STEP[name]
        stages.append(StagePlan(name, counts[name], s.epochs, s.batch_size * s.grad_accum, s.max_length, steps,
                                round(scale, 4)))
    table = cfg.plan
    projections = []
    for gpu, price in table.prices.items():
        seconds = {}
        for i, st in enumerate(stages):
            if st.steps == 0:
                continue
            # the first stage loads (and downloads) the base; later stages find it cached on the node
            load = table.load_s if i == 0 else table.reload_s
            got = (measured or {}).get(gpu, {}).get(st.stage)
            per_step = got.sec_per_step if got else table.sec_per_step[gpu][st.stage]
            seconds[st.stage] = st.steps * per_step * st.step_scale + load
        merge = table.merge_s
        if cfg.gguf.enabled:
            merge += table.gguf_setup_s + table.gguf_s * len(cfg.gguf.quants)
        seconds["merge"] = merge
        projections.append(Projection(gpu, price, seconds))
    return Plan(stages, projections, table.gpu_type, dict(measured or {}))


def _minutes(seconds: float | None) -> str:
    from cluster.console import format_duration

    return "-" if seconds is None else format_duration(seconds)


def plan_markdown(plan: Plan) -> str:
    """The `--plan` table: steps per stage, then seconds and cost per GPU type."""
    lines = ["| stage | examples | epochs | batch x accum | max_length | steps |", "|---|---|---|---|---|---|"]
    for s in plan.stages:
        lines.append(f"| {s.stage} | {s.examples} | {s.epochs:g} | {s.effective_batch} | {s.max_length} | {s.steps} |")
    parts = [k for k in ("sft", "dpo", "merge") if any(k in p.seconds for p in plan.projections)]
    lines += ["", "| GPU type | USD/h | " + " | ".join(parts) + " | total | cost |",
              "|---|---|" + "---|" * len(parts) + "---|---|"]
    for p in plan.projections:
        mark = " (chosen)" if p.gpu_type == plan.gpu_type else ""
        cells = " | ".join(_minutes(p.seconds.get(k)) for k in parts)
        lines.append(f"| {p.gpu_type}{mark} | {p.usd_per_hour:.2f} | {cells} | {_minutes(p.total_s)} | "
                     f"${p.cost_usd:.2f} |")
    lines.append("")
    for gpu, by in plan.measured.items():
        lines += [f"- {gpu} {stage}: {m.sec_per_step:.2f} s per step at the seed's batch shape, measured in "
                  f"`{m.run}` ({m.device}, {m.backend})" for stage, m in by.items()]
    lines.append(f"- {'other' if plan.measured else 'all'} step times: the config's `plan.sec_per_step` "
                 "(default: seed 001's 9B QLoRA figures)")
    return "\n".join(lines)


def actual_markdown(plan: Plan, actual_s: dict[str, float], actual_steps: dict[str, int] | None = None) -> str:
    """After the run: projected (at the chosen GPU type) beside actual seconds, steps and cost.
    The actual cost prices the measured seconds at the chosen type's rate."""
    proj = plan.projection(plan.gpu_type)
    steps = {s.stage: s.steps for s in plan.stages}
    actual_steps = actual_steps or {}
    lines = [f"Projection for {plan.gpu_type} at ${proj.usd_per_hour:.2f}/h beside this run's measured figures.", "",
             "| part | projected steps | actual steps | projected | actual |", "|---|---|---|---|---|"]
    for part in ("sft", "dpo", "merge"):
        if part not in proj.seconds and part not in actual_s:
            continue
        lines.append(f"| {part} | {steps.get(part, '-')} | {actual_steps.get(part, '-')} | "
                     f"{_minutes(proj.seconds.get(part))} | {_minutes(actual_s.get(part))} |")
    total = sum(actual_s.values())
    lines.append(f"| total | | | {_minutes(proj.total_s)} (${proj.cost_usd:.2f}) | {_minutes(total)} "
                 f"(${cost_usd(total, proj.usd_per_hour):.2f}) |")
    return "\n".join(lines)
