"""`yard cost`'s outputs: the markdown report, two CSV files and a PNG of spend by outcome per job.

    write_outputs(jobs, table, Path("cost/"))   # cost.md, cost_jobs.csv, cost_models.csv, cost.png

The markdown holds the seed's headline ('N jobs, $X, $Y wasted (Z%)'), a row per job, a row per
model (unit), and for each job that made a plan its plan beside what it did.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from cluster.config import UserError
from cluster.capacity.cost import (
    CostSummary, JobCost, by_unit, cost_line, final_outcome, headline, money, outcome_columns, percent, plan_vs_actual,
    summarise,
)
from cluster.capacity.ledger import WASTE_OUTCOMES
from cluster.capacity.prices import PriceTable

JOB_COLUMNS = ("job", "status", "attempts", "GPU-h", "CPU-core-h", "cost", "waste", "waste rate", "cold start",
               "cold-start share", "stopped (ASHA)", "kept", "cost per kept")
MODEL_COLUMNS = ("job", "model / unit", "attempts", "outcome", "GPU-h", "cost", "waste", "waste rate",
                 "cold-start share")
PLAN_COLUMNS = ("unit", "planned s", "actual s", "planned", "actual", "attempts", "outcome", "plan basis")


def _job_cells(job: JobCost, s: CostSummary) -> list[str]:
    return [job.job_id, job.status, str(s.attempts), f"{s.gpu_hours:.4f}", f"{s.cpu_hours:.4f}", money(s.usd),
            money(s.waste_usd), percent(s.waste_rate), money(s.cold_usd), percent(s.cold_share),
            money(s.stopped_usd), str(s.kept_units), money(s.usd_per_kept)]


def model_rows(jobs: list[JobCost], table: PriceTable, market: str | None = None) -> list[list[str]]:
    rows = []
    for job in jobs:
        for (_, unit), attempts in by_unit(job.entries).items():
            s = summarise(attempts, table, market=market)
            rows.append([job.job_id, unit, str(len(attempts)), final_outcome(attempts), f"{s.gpu_hours:.4f}",
                         money(s.usd), money(s.waste_usd), percent(s.waste_rate), percent(s.cold_share)])
    return rows


def _md_table(header, rows) -> list[str]:
    def cell(c) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]


def plan_markdown(job: JobCost, table: PriceTable, market: str | None = None) -> list[str]:
    """The plan-beside-actual section of one job (empty when it made no plan)."""
    if not job.plan:
        return []
    lines = _md_table(PLAN_COLUMNS, plan_vs_actual(job.plan, job.entries, table, job.wall_s, market))
    lines += [""] if job.plan.get("assumptions") else []
    for note in job.plan.get("assumptions") or []:
        lines.append(f"- assumed: {note}")
    return lines


def report_section(job: JobCost, table: PriceTable, intro: str = "") -> list[str]:
    """A job report's last section: its plan beside its ledger (when it made a plan), then its cost
    line, last. A unit the table cannot price (a GPU type it lacks) makes the section one line
    saying so: a job's report is never lost to its pricing."""
    try:
        return ["## Cost", "", *([intro, ""] if intro else []), *plan_markdown(job, table), "",
                cost_line(job.entries, table)]
    except UserError as exc:
        return ["## Cost", "", f"Cost: not priced ({exc})"]


def job_cost_line(job, table: PriceTable | None, *, none_booked: str = "the job booked no work") -> str:
    """The cost line that ends a running job's report: its ledger so far priced (`report_section`'s
    last line, so an unpriced GPU type reads "Cost: not priced (...)"). A job that booked nothing
    (it only called endpoints it did not start) says so rather than pricing an empty ledger at $0."""
    if not job.ledger.entries:
        return f"Cost: no GPU time on this cluster ({none_booked})."
    if table is None:
        return "Cost: not priced (no price table given)"
    this = JobCost(job.job_id, job.name, "running", "", None, job.ledger.entries, job.plan)
    return report_section(this, table)[-1]


def render_markdown(jobs: list[JobCost], table: PriceTable, market: str | None = None, title: str = "yard cost") -> str:
    summaries = [summarise(j.entries, table, j.job_id, market) for j in jobs]
    total = summarise([e for j in jobs for e in j.entries], table, "all", market)
    lines = [f"# {title}", "", f"**{headline(len(jobs), total)}**; cold start {money(total.cold_usd)} "
             f"({percent(total.cold_share)}); {total.gpu_hours:.3f} GPU-h, {total.cpu_hours:.3f} CPU-core-h.", "",
             f"Waste: the cost of {', '.join(WASTE_OUTCOMES)} attempts (work whose result was not kept). Trials "
             f"ASHA stopped early are their own column, not waste. Cold start: the start and load phases.",
             f"Prices: {table.source or '-'} ({table.config_file}){f'; every entry at {market}' if market else ''}.",
             "", "## Jobs", ""]
    lines += _md_table(JOB_COLUMNS, [_job_cells(j, s) for j, s in zip(jobs, summaries)])
    cols = outcome_columns(summaries)
    if cols:
        lines += ["", "## Spend by outcome", ""]
        lines += _md_table(("job", *cols), [[j.job_id, *[money(s.by_outcome.get(o, 0.0)) for o in cols]]
                                           for j, s in zip(jobs, summaries)])
    lines += ["", "## Models and units", ""]
    lines += _md_table(MODEL_COLUMNS, model_rows(jobs, table, market))
    planned = [j for j in jobs if j.plan]
    if planned:
        lines += ["", "## Plan vs actual", ""]
        for job in planned:
            lines += [f"### {job.job_id}", ""] + plan_markdown(job, table, market) + [""]
    return "\n".join(lines).rstrip() + "\n"


def _csv(header, rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def jobs_csv(jobs: list[JobCost], table: PriceTable, market: str | None = None) -> str:
    """One row per job, plain numbers (USD, hours, fractions) for a spreadsheet."""
    header = ["job_id", "job", "status", "attempts", "gpu_hours", "cpu_core_hours", "usd", "waste_usd",
              "waste_rate", "cold_usd", "cold_share", "stopped_usd", "kept", "usd_per_kept"]
    rows = []
    for j in jobs:
        s = summarise(j.entries, table, j.job_id, market)
        rows.append([j.job_id, j.job, j.status, s.attempts, round(s.gpu_hours, 6), round(s.cpu_hours, 6),
                     round(s.usd, 6), round(s.waste_usd, 6), _r(s.waste_rate), round(s.cold_usd, 6),
                     _r(s.cold_share), round(s.stopped_usd, 6), s.kept_units, _r(s.usd_per_kept)])
    return _csv(header, rows)


def models_csv(jobs: list[JobCost], table: PriceTable, market: str | None = None) -> str:
    """One row per (job, unit): attempts, final outcome, hours and USD."""
    header = ["job_id", "unit", "attempts", "outcome", "node_type", "gpus", "cpus", "seconds", "gpu_hours",
              "usd", "waste_usd", "cold_usd"]
    rows = []
    for j in jobs:
        for (_, unit), attempts in by_unit(j.entries).items():
            s = summarise(attempts, table, market=market)
            last = attempts[-1]
            rows.append([j.job_id, unit, len(attempts), last.outcome, last.node_type, last.gpus, last.cpus,
                         round(s.seconds, 3), round(s.gpu_hours, 6), round(s.usd, 6), round(s.waste_usd, 6),
                         round(s.cold_usd, 6)])
    return _csv(header, rows)


def _r(x: float | None) -> float | str:
    return "" if x is None else round(x, 6)


OUTCOME_COLORS = {"kept": "#4c9a2a", "stopped": "#9e9e9e", "retried": "#f0a030", "failed": "#d62728",
                  "skipped": "#8c564b", "stalled": "#9467bd"}


def spend_png(jobs: list[JobCost], table: PriceTable, path: Path, market: str | None = None) -> Path:
    """A stacked bar per job: USD by outcome (kept green, waste in warm colours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = [summarise(j.entries, table, j.job_id, market) for j in jobs]
    cols = outcome_columns(summaries) or ["kept"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(jobs) + 2.5), 4.5))
    labels = [j.job_id for j in jobs]
    bottom = [0.0] * len(jobs)
    for outcome in cols:
        values = [s.by_outcome.get(outcome, 0.0) for s in summaries]
        ax.bar(range(len(jobs)), values, width=0.6, bottom=bottom, label=outcome, color=OUTCOME_COLORS.get(outcome))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(jobs)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("USD")
    total = summarise([e for j in jobs for e in j.entries], table, market=market)
    ax.set_title(headline(len(jobs), total).replace("$", r"\$"), fontsize=9)  # "$...$" is mathtext to matplotlib
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(jobs: list[JobCost], table: PriceTable, out_dir: Path, market: str | None = None,
                  title: str = "yard cost") -> dict[str, Path]:
    """cost.md, cost_jobs.csv, cost_models.csv and cost.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out_dir / "cost.md", "jobs_csv": out_dir / "cost_jobs.csv",
             "models_csv": out_dir / "cost_models.csv", "png": out_dir / "cost.png"}
    files["markdown"].write_text(render_markdown(jobs, table, market, title))
    files["jobs_csv"].write_text(jobs_csv(jobs, table, market))
    files["models_csv"].write_text(models_csv(jobs, table, market))
    spend_png(jobs, table, files["png"], market)
    return files
