"""The job ledger: one row per attempt at a unit of work (a model on a warm host, a sweep trial, a
persona stage, a serve replica), with what it held, how long by phase, and what became of it.

    ledger = Ledger(job_id, kind="dna", market="on_demand")
    ledger.add(unit="llama-a", node_type="1xH100", accelerator="H100", gpus=1, cpus=1,
               phases={"start": 41.0, "load": 12.5, "generate": 300.2, "evaluate": 8.1}, outcome="kept")

`cluster.ops.jobs.run_job` gives every job one (`job.ledger`) and writes it as `ledger.jsonl` beside
the job's manifest (`jobs/<job>/<run>/`), with the job's plan (`plan.json`) when it made one: a
plan's units are ledger rows whose outcome is "planned". `yard cost` (cluster/capacity/cost.py) prices them.

Outcomes: kept (the result is in the store and counts), failed (final failure), retried (an
attempt that failed and was run again), skipped (given up after the same error twice), stalled
(killed for a late heartbeat), stopped (ended early by ASHA). Everything not kept is waste except
"stopped": stopping a weak trial early is the scheduler doing its job (it buys the ranking that
saves the rest of the trial), and counting it as waste would blame the search for being cheap.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

PHASES = ("start", "load", "generate", "train", "evaluate", "run", "idle")  # run: an experiment's own work
COLD_PHASES = ("start", "load")  # imports, CUDA, image, model load: the cold start's own line
OUTCOMES = ("kept", "failed", "retried", "skipped", "stalled", "stopped", "planned")
WASTE_OUTCOMES = ("failed", "retried", "skipped", "stalled")
LEDGER_FILE, PLAN_FILE = "ledger.jsonl", "plan.json"
_NODE_KIND = re.compile(r"^(?P<gpus>\d+)x(?P<accel>.+?)(?:-[\d.]+cpu)?$")


@dataclass
class LedgerEntry:
    """One attempt at one unit of work. `phases`: wall seconds by phase (PHASES); the attempt's
    wall time is their sum. `gpus` may be fractional (hosts side by side on one GPU)."""

    job_id: str
    kind: str  # the job: dna, sweep, persona, serve
    unit: str  # model id, trial id, stage, replica
    node_type: str  # "cpu", "1xH100", an instance type
    accelerator: str | None
    gpus: float
    cpus: float
    market: str
    phases: dict[str, float]
    outcome: str
    attempt: int = 1
    where: str = ""  # the host, trial or task it ran on
    reason: str = ""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"ledger outcome {self.outcome!r} (allowed: {', '.join(OUTCOMES)})")
        bad = [p for p in self.phases if p not in PHASES]
        if bad:
            raise ValueError(f"ledger phase {bad[0]!r} (allowed: {', '.join(PHASES)})")
        self.phases = {p: round(max(float(s), 0.0), 4) for p, s in self.phases.items()}

    @property
    def seconds(self) -> float:
        return sum(self.phases.values())

    @property
    def cold_seconds(self) -> float:
        return sum(self.phases.get(p, 0.0) for p in COLD_PHASES)

    @property
    def waste(self) -> bool:
        return self.outcome in WASTE_OUTCOMES

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> "LedgerEntry":
        known = {k: row[k] for k in cls.__dataclass_fields__ if k in row}
        return cls(**known)


@dataclass
class Ledger:
    """A job's entries, in the order they happened."""

    job_id: str
    kind: str
    market: str = "on_demand"
    entries: list[LedgerEntry] = field(default_factory=list)

    def add(self, *, unit: str, node_type: str, accelerator: str | None, gpus: float, cpus: float,
            phases: dict[str, float], outcome: str, attempt: int = 1, where: str = "", reason: str = "",
            market: str | None = None) -> LedgerEntry:
        entry = LedgerEntry(self.job_id, self.kind, unit, node_type, accelerator, float(gpus), float(cpus),
                            market or self.market, dict(phases), outcome, attempt, where, reason[:300])
        self.entries.append(entry)
        return entry

    def to_jsonl(self) -> str:
        return "".join(json.dumps(e.to_dict(), default=str) + "\n" for e in self.entries)


def parse_jsonl(text: str, source: str) -> list[LedgerEntry]:
    """Entries of a `ledger.jsonl`; a row that is not one is skipped with a warning naming it (a
    ledger is an account of the past: one bad row must not hide the rest)."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(LedgerEntry.from_dict(json.loads(line)))
        except (ValueError, TypeError) as exc:
            log.warning("%s:%d: not a ledger row (%s); skipped", source, number, exc)
    return entries


def node_type_facts(node_kind: str) -> tuple[str | None, int]:
    """(accelerator, GPUs per node) of a planner node kind name: "2xH100" -> ("H100", 2),
    "1xA100-40G-8cpu" -> ("A100-40G", 1), "cpu" -> (None, 0)."""
    match = _NODE_KIND.match(node_kind)
    if not match:
        return None, 0
    return match["accel"], int(match["gpus"])


def unit_resources(gpus: float, cpus: float, *, tasks: int = 1, accelerator: str | None = None) -> dict:
    """Ledger fields (node_type, accelerator, gpus, cpus) for a unit of work on `tasks` tasks that
    each hold `gpus` and `cpus`: node_type "<N>x<type>" for one task's N GPUs (at least 1) of
    `accelerator` or else the cluster's GPU type, "gpu" where no type is known, "cpu" without GPUs.

        >>> unit_resources(0, 2)
        {'node_type': 'cpu', 'accelerator': None, 'gpus': 0, 'cpus': 2}
        >>> unit_resources(2, 4, tasks=3, accelerator="H200")
        {'node_type': '2xH200', 'accelerator': 'H200', 'gpus': 6, 'cpus': 12}
    """
    accel = (accelerator or cluster_accelerator()) if gpus else None
    node = f"{max(1, round(gpus))}x{accel}" if accel else ("gpu" if gpus else "cpu")
    return {"node_type": node, "accelerator": accel, "gpus": gpus * tasks, "cpus": cpus * tasks}


def cluster_accelerator() -> str | None:
    """The accelerator type of the connected Ray cluster's GPUs (the first one Ray reports), or
    None without GPUs or Ray: what a job that does not pick its node type is priced at."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    for key in ray.cluster_resources():
        if key.startswith("accelerator_type:"):
            return key.split(":", 1)[1]
    return None
