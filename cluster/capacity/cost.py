"""What the work cost: ledgers (cluster/capacity/ledger.py) priced with a price table (cluster/capacity/prices.py),
summed per job, per model and across jobs in the seed's terms ("77 jobs, $64.28, $33.93 wasted
(52.8%)"), and a job's plan beside what it did.

    jobs = read_jobs(store)                              # every job with a ledger or a plan
    total = summarise([e for j in jobs for e in j.entries], table)
    print(headline(len(jobs), total))                    # "3 jobs, $1.23, $0.40 wasted (32.5%)"
    print(cost_line(job.entries, table))                 # the last line of every job's report

Waste is the cost of entries whose outcome is failed, retried, skipped or stalled (not kept);
ASHA-stopped trials are their own line (cluster/capacity/ledger.py says why). The cold start (start + load
phases: imports, CUDA, image, model load) is its own line whatever the outcome. Cost per kept
artifact is the whole cost, waste included, over the units whose result was kept.
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from cluster.capacity.ledger import LEDGER_FILE, OUTCOMES, PLAN_FILE, WASTE_OUTCOMES, LedgerEntry, parse_jsonl
from cluster.capacity.prices import PriceTable
from cluster.store.storage import ArtifactStore, StoreError

log = logging.getLogger(__name__)


@dataclass
class CostSummary:
    """Sums over a set of ledger entries, in USD and hours."""

    label: str
    usd: float = 0.0
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0
    seconds: float = 0.0
    cold_usd: float = 0.0
    kept_units: int = 0
    attempts: int = 0
    by_outcome: dict[str, float] = field(default_factory=dict)  # outcome -> USD

    @property
    def waste_usd(self) -> float:
        return sum(self.by_outcome.get(o, 0.0) for o in WASTE_OUTCOMES)

    @property
    def stopped_usd(self) -> float:
        return self.by_outcome.get("stopped", 0.0)

    @property
    def waste_rate(self) -> float | None:
        return self.waste_usd / self.usd if self.usd > 0 else None

    @property
    def cold_share(self) -> float | None:
        return self.cold_usd / self.usd if self.usd > 0 else None

    @property
    def usd_per_kept(self) -> float | None:
        return self.usd / self.kept_units if self.kept_units else None


def entry_usd(entry: LedgerEntry, table: PriceTable, market: str | None = None, seconds: float | None = None) -> float:
    """USD for `entry` (or `seconds` of what it held): its hours at its resources' rate."""
    rate = table.usd_per_hour(entry.accelerator, gpus=entry.gpus, cpus=entry.cpus, market=market or entry.market)
    return (entry.seconds if seconds is None else seconds) / 3600.0 * rate


def summarise(entries: list[LedgerEntry], table: PriceTable, label: str = "", market: str | None = None) -> CostSummary:
    """The sums of `entries` priced at `table` (at each entry's market, or `market` for all)."""
    out = CostSummary(label)
    kept: set[tuple[str, str]] = set()
    for e in entries:
        usd = entry_usd(e, table, market)
        out.usd += usd
        out.cold_usd += entry_usd(e, table, market, seconds=e.cold_seconds)
        out.seconds += e.seconds
        out.gpu_hours += e.gpus * e.seconds / 3600.0
        out.cpu_hours += (e.cpus if e.gpus == 0 else 0.0) * e.seconds / 3600.0
        out.by_outcome[e.outcome] = out.by_outcome.get(e.outcome, 0.0) + usd
        out.attempts += 1
        if e.outcome == "kept":
            kept.add((e.job_id, e.unit))
    out.kept_units = len(kept)
    return out


def by_unit(entries: list[LedgerEntry]) -> dict[tuple[str, str], list[LedgerEntry]]:
    """(job id, unit) -> its attempts, in ledger order."""
    groups: dict[tuple[str, str], list[LedgerEntry]] = defaultdict(list)
    for e in entries:
        groups[(e.job_id, e.unit)].append(e)
    return dict(groups)


def final_outcome(attempts: list[LedgerEntry]) -> str:
    """What became of a unit: its last attempt's outcome."""
    return attempts[-1].outcome if attempts else "-"


def money(usd: float | None) -> str:
    """$ with enough digits to tell small figures apart ($0.0012 on a laptop, $64.28 on a cluster)."""
    if usd is None:
        return "-"
    return f"${usd:,.2f}" if abs(usd) >= 1 or usd == 0 else f"${usd:.4f}"


def percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def headline(n_jobs: int, total: CostSummary) -> str:
    """The seed's terms: 'N jobs, $X, $Y wasted (Z%)'."""
    return f"{n_jobs} job{'s' if n_jobs != 1 else ''}, {money(total.usd)}, {money(total.waste_usd)} wasted " \
           f"({percent(total.waste_rate or 0.0)})"


def cost_line(entries: list[LedgerEntry], table: PriceTable, market: str | None = None) -> str:
    """One line for the end of a job's report: cost, hours, waste by outcome, cold start, per kept."""
    s = summarise(entries, table, market=market)
    hours = " + ".join([f"{s.gpu_hours:.3f} GPU-h"] * bool(s.gpu_hours) + [f"{s.cpu_hours:.3f} CPU-core-h"] * bool(s.cpu_hours)
                       ) or "0 h"
    parts = [f"{o} {money(s.by_outcome[o])}" for o in WASTE_OUTCOMES if s.by_outcome.get(o)]
    waste = f"{money(s.waste_usd)} wasted ({percent(s.waste_rate or 0.0)}{': ' + ', '.join(parts) if parts else ''})"
    line = f"Cost: {money(s.usd)} ({hours}, {s.attempts} attempt{'s' if s.attempts != 1 else ''}); {waste}; " \
           f"cold start {money(s.cold_usd)} ({percent(s.cold_share)})"
    if s.stopped_usd:
        line += f"; stopped by ASHA {money(s.stopped_usd)}"
    line += f"; {money(s.usd_per_kept)} per kept artifact ({s.kept_units} kept)" if s.kept_units else "; nothing kept"
    return line + f". Prices: {table.source or table.config_file}."


# --- plan beside actual ---------------------------------------------------------------------------
def plan_entries(plan: dict | None) -> list[LedgerEntry]:
    """A plan's units as ledger rows (outcome "planned")."""
    out = []
    for row in (plan or {}).get("units") or []:
        try:
            out.append(LedgerEntry.from_dict({**row, "outcome": "planned"}))
        except (ValueError, TypeError) as exc:
            log.warning("plan unit %r skipped: %s", row.get("unit"), exc)
    return out


def plan_vs_actual(plan: dict, entries: list[LedgerEntry], table: PriceTable, actual_wall_s: float | None = None,
                   market: str | None = None) -> list[list[str]]:
    """Rows [unit, planned s, actual s, planned $, actual $, attempts, outcome, basis] per planned or
    ledgered unit, then a total row (seconds of work summed; wall time beside it when known). A
    plan's `groups` ({planned unit: unit prefix}, e.g. {"trials": "trial "}) sums the units it
    could not name in advance into one planned row."""
    planned = {e.unit: e for e in plan_entries(plan)}
    groups = plan.get("groups") or {}
    actual: dict[str, list[LedgerEntry]] = defaultdict(list)
    finals: dict[str, list[str]] = defaultdict(list)
    for (_, unit), attempts in by_unit(entries).items():
        key = next((name for name, prefix in groups.items() if unit.startswith(prefix)), unit)
        actual[key] += attempts
        finals[key].append(final_outcome(attempts))
    rows, tot = [], [0.0, 0.0, 0.0, 0.0]
    for unit in list(planned) + [u for u in actual if u not in planned]:
        p, a = planned.get(unit), actual.get(unit, [])
        p_s = p.seconds if p else None
        p_usd = entry_usd(p, table, market) if p else None
        a_s = sum(e.seconds for e in a)
        a_usd = sum(entry_usd(e, table, market) for e in a)
        tot = [tot[0] + (p_s or 0.0), tot[1] + a_s, tot[2] + (p_usd or 0.0), tot[3] + a_usd]
        basis = (plan.get("basis") or {}).get(unit, "") if p else "not planned"
        outcome = finals[unit][0] if len(finals[unit]) == 1 else \
            ", ".join(f"{n} {o}" for o, n in sorted(Counter(finals[unit]).items())) or "-"
        rows.append([unit, _secs(p_s), _secs(a_s) if a else "-", money(p_usd), money(a_usd) if a else "-",
                     str(len(a)), outcome, basis])
    rows.append(["total (work)", _secs(tot[0]), _secs(tot[1]), money(tot[2]), money(tot[3]),
                 str(len(entries)), "", ""])
    if plan.get("wall_s") is not None or actual_wall_s is not None:
        rows.append(["wall time", _secs(plan.get("wall_s")), _secs(actual_wall_s), "", "", "", "", ""])
    return rows


def _secs(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f}"


# --- reading jobs back from the store -------------------------------------------------------------
@dataclass
class JobCost:
    """One job as the store has it: its manifest's facts, ledger and plan."""

    job_id: str
    job: str
    status: str
    prefix: str  # jobs/<job>/<run>
    wall_s: float | None
    entries: list[LedgerEntry]
    plan: dict | None


def read_jobs(store: ArtifactStore, selectors: list[str] | None = None) -> list[JobCost]:
    """Every job of the store with a ledger or a plan, oldest first; `selectors` keep those whose
    job id equals or starts with one, or whose job name (dna, sweep, ...) is one."""
    runs: dict[str, set[str]] = defaultdict(set)
    for key in store.list_keys("jobs/"):
        prefix, _, name = key.rpartition("/")
        if name in ("manifest.json", LEDGER_FILE, PLAN_FILE) and prefix.count("/") == 2:
            runs[prefix].add(name)
    out = []
    for prefix in sorted(runs, key=lambda p: p.rsplit("/", 1)[1]):
        names = runs[prefix]
        if not names & {LEDGER_FILE, PLAN_FILE}:
            continue
        try:
            manifest = store.get_json(f"{prefix}/manifest.json") if "manifest.json" in names else {}
        except (StoreError, ValueError) as exc:
            log.warning("%s: manifest unreadable (%s)", prefix, exc)
            manifest = {}
        job_id = str(manifest.get("job_id") or prefix.rsplit("/", 1)[1])
        job = str(manifest.get("job") or prefix.split("/")[1])
        if selectors and not any(job_id == s or job_id.startswith(s) or job == s for s in selectors):
            continue
        entries = parse_jsonl(store.get_bytes(f"{prefix}/{LEDGER_FILE}").decode(), store.locate(f"{prefix}/{LEDGER_FILE}")) \
            if LEDGER_FILE in names else []
        plan = None
        if PLAN_FILE in names:
            try:
                plan = store.get_json(f"{prefix}/{PLAN_FILE}")
            except (StoreError, ValueError) as exc:
                log.warning("%s: plan unreadable (%s)", prefix, exc)
        out.append(JobCost(job_id, job, str(manifest.get("status") or "?"), prefix, manifest.get("seconds"),
                           entries, plan if isinstance(plan, dict) else None))
    return out


def outcome_columns(summaries: list[CostSummary]) -> list[str]:
    """The outcomes that cost anything in `summaries`, in OUTCOMES order."""
    return [o for o in OUTCOMES if any(s.by_outcome.get(o) for s in summaries)]
