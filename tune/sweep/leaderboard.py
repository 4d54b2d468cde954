"""Leaderboard of a sweep: trials ranked the way the users rank their lanes.

One flat row per trial (trial_id, status, prune_depth, kd_samples, lora_rank, quant, perf,
"perf.<benchmark>", sec_per_token, perf_norm, speed_norm, score, size_mb, ...). Trials with status
"ok" and a score are ranked by Score (ties: smaller size_mb, then trial_id); stopped, failed and
rejected trials follow, unranked, each with its reason.

    paths = write_leaderboard(rows, baseline, out_dir, title="sweep prune-kd")
    paths["md"].read_text()      # also paths["csv"], ["html"], ["score_vs_params"], ["pareto"]

Plots are always written, with a note in place of points when no trial is ranked, so a sweep
publishes the same set of files whatever happened to its trials.
"""
from __future__ import annotations

import base64
import csv
import html
import logging
import math
import numbers
from pathlib import Path

import numpy as np

from cluster.config import UserError

log = logging.getLogger(__name__)

STATUSES = ("ok", "stopped", "error", "rejected")
BENCH_PREFIX = "perf."
# A copy of the base scores exactly 0.5 (PerfNorm 1, SpeedNorm 0): the bar a trial has to clear.
BASELINE_SCORE = 0.5
LEAD_COLUMNS = ("rank", "trial_id", "status", "prune_depth", "kd_samples", "lora_rank", "quant",
                "ffn_keep_ratio", "layers")
TAIL_COLUMNS = ("perf", "sec_per_token", "perf_norm", "speed_norm", "score", "score_spread", "within_noise",
                "size_mb", "kd_loss", "val_loss", "pareto", "candidate", "seconds", "sec_per_token_in_trial",
                "speed_norm_in_trial", "score_in_trial", "error")
PARAMS = ("prune_depth", "kd_samples", "lora_rank")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
FILES = {"csv": "leaderboard.csv", "md": "leaderboard.md", "html": "leaderboard.html",
         "score_vs_params": "score_vs_params.png", "pareto": "pareto.png"}


class LeaderboardError(UserError, ValueError):
    """Rows or baseline that cannot be ranked, phrased as one line naming the row and field."""


def _num(value) -> float | None:
    """A finite float, or None for None, NaN, infinities and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _check_rows(rows) -> list[dict]:
    if not isinstance(rows, (list, tuple)):
        raise LeaderboardError(f"rows: expected a list of trial dicts, got {type(rows).__name__}")
    seen = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise LeaderboardError(f"rows[{i}]: expected a dict, got {type(row).__name__}")
        tid = row.get("trial_id")
        if not isinstance(tid, str) or not tid:
            raise LeaderboardError(f"rows[{i}].trial_id: expected a non-empty string, got {tid!r}")
        if tid in seen:
            raise LeaderboardError(f"rows[{i}].trial_id: {tid!r} appears more than once")
        seen.add(tid)
        if row.get("status") not in STATUSES:
            raise LeaderboardError(f"rows[{i}].status: {row.get('status')!r} is unknown (allowed: {', '.join(STATUSES)})")
    return list(rows)


def _rankable(row: dict) -> bool:
    return row["status"] == "ok" and _num(row.get("score")) is not None


def rank_rows(rows: list[dict]) -> list[dict]:
    """Copies of `rows`: ok trials with a score first, by score descending (ties: smaller size_mb,
    a missing size last, then trial_id), with "rank" 1..n; then every other row with rank None,
    ordered by status (ok without score, stopped, error, rejected) then trial_id.

    Raises LeaderboardError for a row that is not a dict, lacks a trial_id, repeats one, or has an
    unknown status."""
    rows = _check_rows(rows)
    ranked = sorted((r for r in rows if _rankable(r)), key=lambda r: (
        -_num(r["score"]), _num(r.get("size_mb")) if _num(r.get("size_mb")) is not None else math.inf, r["trial_id"]))
    rest = sorted((r for r in rows if not _rankable(r)),
                  key=lambda r: (STATUSES.index(r["status"]), r["trial_id"]))
    out = [{**r, "rank": i} for i, r in enumerate(ranked, start=1)]
    for above, row in zip(out, out[1:]):
        row["within_noise"] = _within_noise(above, row)
    return out + [{**r, "rank": None} for r in rest]


def _within_noise(a: dict, b: dict) -> bool | None:
    """Whether two Scores differ by less than the larger of their spreads (the timing phase's
    `score_spread`); None when neither row has a spread."""
    spreads = [x for x in (_num(a.get("score_spread")), _num(b.get("score_spread"))) if x is not None]
    if not spreads:
        return None
    return abs(_num(a["score"]) - _num(b["score"])) < max(spreads)


def pareto_front(rows: list[dict]) -> list[str]:
    """trial_ids of the ok rows (with a perf and a sec_per_token) that no other such row dominates
    in (perf higher, sec_per_token lower): at least as good on both and better on one. Ordered by
    sec_per_token ascending. Identical points are all on the front."""
    points = [(r["trial_id"], _num(r.get("perf")), _num(r.get("sec_per_token"))) for r in _check_rows(rows)
              if r["status"] == "ok"]
    points = [p for p in points if p[1] is not None and p[2] is not None]
    front = [(tid, perf, spt) for tid, perf, spt in points
             if not any(p >= perf and s <= spt and (p > perf or s < spt) for _, p, s in points)]
    return [tid for tid, _, _ in sorted(front, key=lambda p: (p[2], -p[1], p[0]))]


def reason(row: dict) -> str:
    """Why a row is not ranked, in one line (its error text when it has one)."""
    text = str(row.get("error") or "").strip().replace("\n", " ")
    if text:
        return text
    if row["status"] == "stopped":
        val = _num(row.get("val_loss"))
        return "early-stopped by ASHA" + (f" at val_loss {val:.4f}" if val is not None else "")
    if row["status"] == "ok":
        return "no score (the base's perf is 0, or perf or sec_per_token is missing)"
    return f"{row['status']} (no message recorded)"


# --- formatting --------------------------------------------------------------------------------

def _sig(value: float, digits: int = 4) -> str:
    """`digits` significant digits, never in exponent form: 0.000236, 0.01234, 12.35."""
    return np.format_float_positional(value, precision=digits, unique=False, fractional=False, trim="-")


def fmt(column: str, value) -> str:
    """A cell as the users' sheet writes it: perf and Score to 4 decimals, sec_per_token to 4
    significant digits, size to 0.1 MB, "-" for a missing value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return ("≈" if column == "within_noise" else "*") if value else ""
    if not isinstance(value, numbers.Real):
        return str(value).replace("\n", " ")
    if column in ("rank", "prune_depth", "kd_samples", "lora_rank", "layers"):
        return str(int(value))
    if column == "sec_per_token":
        return _sig(float(value))
    if column == "size_mb":
        return f"{value:.1f}"
    if column == "ffn_keep_ratio":
        return f"{value:.2f}"
    if column == "seconds":
        return f"{value:.0f}"
    return f"{value:.4f}"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def bench_columns(rows: list[dict], baseline: dict | None = None) -> list[str]:
    """The "perf.<benchmark>" keys present in any row or the baseline, sorted."""
    keys = {k for r in [*rows, baseline or {}] for k in r if k.startswith(BENCH_PREFIX)}
    return sorted(keys)


def csv_columns(rows: list[dict], baseline: dict | None = None) -> list[str]:
    """Stable order: the trial's config, per-benchmark perf (sorted), the score columns, the rest
    of the bookkeeping, then any unknown keys sorted."""
    known = [*LEAD_COLUMNS, *bench_columns(rows, baseline), *TAIL_COLUMNS]
    extra = sorted({k for r in rows for k in r} - set(known))
    return known + extra


def _table_columns(benches: list[str]) -> list[tuple[str, str]]:
    """(row key, header) of the ranked table in the md and html reports."""
    return ([("rank", "rank"), ("trial_id", "trial"), ("prune_depth", "prune_depth"),
             ("kd_samples", "kd_samples"), ("lora_rank", "lora_rank"), ("quant", "quant")]
            + [(b, b[len(BENCH_PREFIX):]) for b in benches]
            + [("perf", "perf"), ("sec_per_token", "sec_per_token"), ("perf_norm", "perf_norm"),
               ("speed_norm", "speed_norm"), ("score", "Score"), ("score_spread", "±"),
               ("within_noise", "≈ above"), ("size_mb", "size MB"), ("pareto", "pareto")])


def _baseline_line(baseline: dict, benches: list[str]) -> str:
    per_bench = ", ".join(f"{b[len(BENCH_PREFIX):]} {fmt(b, baseline[b])}" for b in benches if b in baseline)
    return (f"Baseline `{baseline.get('model_id', '?')}`: perf {fmt('perf', baseline.get('perf'))}"
            + (f" ({per_bench})" if per_bench else "")
            + f", sec_per_token {fmt('sec_per_token', baseline.get('sec_per_token'))}"
            + f", size {fmt('size_mb', baseline.get('size_mb'))} MB, {fmt('layers', baseline.get('layers'))} layers."
            + f" A copy of the baseline scores {BASELINE_SCORE}.")


# The timing phase (tune/sweep/timing.py) gives every Score a spread; neighbours closer than it are flagged.
_NOISE_NOTE = (" `±`: half the Score's range over the timing rounds (speed measured with every model alone, "
               "interleaved); `≈` in ≈ above: within that noise of the trial ranked above, so their order is not "
               "a measurement.")


def _summary_line(ranked_rows: list[dict]) -> str:
    counts = {s: sum(r["status"] == s for r in ranked_rows) for s in STATUSES}
    n_ranked = sum(r["rank"] is not None for r in ranked_rows)
    parts = [f"{n} {s}" for s, n in counts.items() if n and s != "ok"]
    trials = "trial" if len(ranked_rows) == 1 else "trials"
    return f"{len(ranked_rows)} {trials}: {n_ranked} ranked" + "".join(f", {p}" for p in parts) + "."


def render_markdown(ranked_rows: list[dict], baseline: dict, title: str) -> str:
    """The leaderboard.md text for rows already passed through rank_rows (with "pareto" set)."""
    benches = bench_columns(ranked_rows, baseline)
    columns = _table_columns(benches)
    lines = [f"# {title}", "", _baseline_line(baseline, benches), "", _summary_line(ranked_rows)
             + " `*` in pareto: on the perf / sec_per_token Pareto front." + _NOISE_NOTE, ""]
    ranked = [r for r in ranked_rows if r["rank"] is not None]
    if ranked:
        lines.append("| " + " | ".join(h for _, h in columns) + " |")
        lines.append("|" + "|".join("---" if k in ("trial_id", "quant") else "---:" for k, _ in columns) + "|")
        lines += ["| " + " | ".join(_md(fmt(k, r.get(k))) for k, _ in columns) + " |" for r in ranked]
    else:
        lines.append("No trial finished ok with a score: nothing to rank.")
    rest = [r for r in ranked_rows if r["rank"] is None]
    if rest:
        lines += ["", "## Not ranked", "", "| trial | status | reason |", "|---|---|---|"]
        lines += [f"| {_md(r['trial_id'])} | {r['status']} | {_md(reason(r))} |" for r in rest]
    return "\n".join(lines) + "\n"


def write_csv(ranked_rows: list[dict], baseline: dict, path: Path) -> None:
    """Every row, ranked first, full-precision numbers, empty cells for missing values."""
    columns = csv_columns(ranked_rows, baseline)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in ranked_rows:
            writer.writerow({c: "" if r.get(c) is None else r.get(c) for c in columns})


# --- plots -------------------------------------------------------------------------------------

def _figure(width_in: float, height_in: float, ncols: int = 1):
    # Figure without pyplot: renders with Agg, touches no global backend state, safe in threads
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=110, layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _style(quants: list[str]) -> dict[str, dict]:
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    return {q: {"color": colors[i % len(colors)], "marker": _MARKERS[i % len(_MARKERS)]}
            for i, q in enumerate(quants)}


def _quant(row: dict) -> str:
    return str(row.get("quant") or "none")


def plot_score_vs_params(ranked_rows: list[dict], path: Path) -> None:
    """Three panels, Score against prune_depth, kd_samples and lora_rank; one marker and colour
    per quant scheme; the baseline copy's 0.5 as a dashed line."""
    from matplotlib.ticker import MaxNLocator

    ranked = [r for r in ranked_rows if r["rank"] is not None]
    style = _style(sorted({_quant(r) for r in ranked}))
    fig, axes = _figure(12, 4, ncols=len(PARAMS))
    for ax, param in zip(axes, PARAMS):
        for quant, st in style.items():
            pts = [(_num(r.get(param)), _num(r["score"])) for r in ranked if _quant(r) == quant]
            pts = [p for p in pts if p[0] is not None]
            if pts:
                ax.scatter(*zip(*pts), label=quant, s=36, alpha=0.85, **st)
        ax.axhline(BASELINE_SCORE, color="grey", linestyle="--", linewidth=1, label=f"baseline copy ({BASELINE_SCORE})")
        ax.set_xlabel(param)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # the knobs are counts: no 0.5 layers
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Score")
    if ranked:
        axes[0].legend(fontsize=8, title="quant", title_fontsize=8)
    else:
        axes[1].text(0.5, 0.5, "no ranked trials yet", transform=axes[1].transAxes, ha="center", va="center")
    fig.suptitle("Score against the sweep's knobs")
    fig.savefig(path)


def plot_pareto(ranked_rows: list[dict], baseline: dict, front: list[str], path: Path) -> None:
    """perf against sec_per_token for the ok trials, the Pareto front drawn through its trials
    (labelled), the baseline as a black star."""
    points = {r["trial_id"]: (_num(r.get("sec_per_token")), _num(r.get("perf")), _quant(r))
              for r in ranked_rows if r["status"] == "ok"}
    points = {t: p for t, p in points.items() if p[0] is not None and p[1] is not None}
    style = _style(sorted({p[2] for p in points.values()}))
    fig, (ax,) = _figure(7, 5)
    for quant, st in style.items():
        pts = [(x, y) for x, y, q in points.values() if q == quant]
        ax.scatter(*zip(*pts), label=quant, s=36, alpha=0.85, **st)
    if front:
        xs, ys = zip(*[points[t][:2] for t in front])
        ax.plot(xs, ys, color="black", linewidth=1, linestyle="-", label="Pareto front", zorder=0)
        for tid, x, y in zip(front, xs, ys):
            ax.annotate(tid, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    base_x, base_y = _num(baseline.get("sec_per_token")), _num(baseline.get("perf"))
    if base_x is not None and base_y is not None:
        ax.scatter([base_x], [base_y], marker="*", s=160, color="black", label=f"baseline {baseline.get('model_id', '')}")
    if not points:
        # near the top, clear of the baseline star, which sits in the middle when it is alone
        ax.text(0.5, 0.9, "no ok trials with perf and sec_per_token yet", transform=ax.transAxes,
                ha="center", va="center")
    ax.set_xlabel("sec_per_token (lower is faster)")
    ax.set_ylabel("perf (mean over benchmarks)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title("perf / speed trade-off")
    fig.savefig(path)


# --- html --------------------------------------------------------------------------------------

# Click a header to sort by it (numbers numerically, "-" last); inline so the page is self-contained.
_SORT_JS = """
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], asc = th.dataset.dir !== "asc";
  th.dataset.dir = asc ? "asc" : "desc";
  const key = r => { const t = r.cells[col].textContent, n = parseFloat(t); return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    const c = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
    return asc ? c : -c;
  }).forEach(r => body.appendChild(r));
}));
"""
_CSS = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{cursor:pointer;background:#f3f3f3}"
        "td.t{text-align:left}img{max-width:100%;margin:1em 0}")


def _html_table(columns: list[tuple[str, str]], rows: list[dict], text_keys=("trial_id", "quant", "status", "reason")) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in columns)
    body = "".join("<tr>" + "".join(
        f"<td{' class=t' if k in text_keys else ''}>{html.escape(fmt(k, r.get(k)))}</td>"
        for k, _ in columns) + "</tr>" for r in rows)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(ranked_rows: list[dict], baseline: dict, title: str, pngs: dict[str, Path]) -> str:
    """One self-contained page: the ranked table (sortable), the unranked trials, both plots inline."""
    benches = bench_columns(ranked_rows, baseline)
    ranked = [r for r in ranked_rows if r["rank"] is not None]
    rest = [{**r, "reason": reason(r)} for r in ranked_rows if r["rank"] is None]
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(_baseline_line(baseline, benches))}</p>",
             f"<p>{html.escape(_summary_line(ranked_rows))} Click a column header to sort.</p>"]
    parts.append(_html_table(_table_columns(benches), ranked) if ranked
                 else "<p>No trial finished ok with a score: nothing to rank.</p>")
    if rest:
        parts += ["<h2>Not ranked</h2>",
                  _html_table([("trial_id", "trial"), ("status", "status"), ("reason", "reason")], rest)]
    for name, png in pngs.items():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}<script>{_SORT_JS}</script></body></html>\n")


def write_leaderboard(rows: list[dict], baseline: dict, out_dir, *, title: str = "") -> dict[str, Path]:
    """Write leaderboard.csv, leaderboard.md, score_vs_params.png, pareto.png and leaderboard.html
    into `out_dir` (created); return their paths keyed "csv", "md", "score_vs_params", "pareto",
    "html". Every file is written even with no ranked trial (the md and the plots say so).

    Raises LeaderboardError for bad rows (see rank_rows) or a baseline that is not a dict."""
    if not isinstance(baseline, dict):
        raise LeaderboardError(f"baseline: expected a dict (model_id, perf, sec_per_token, ...), got {type(baseline).__name__}")
    ranked_rows = rank_rows(rows)
    front = pareto_front(ranked_rows)
    on_front = set(front)
    ranked_rows = [{**r, "pareto": r["trial_id"] in on_front} for r in ranked_rows]
    title = title or f"Leaderboard: {baseline.get('model_id', 'sweep')}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in FILES.items()}
    write_csv(ranked_rows, baseline, paths["csv"])
    paths["md"].write_text(render_markdown(ranked_rows, baseline, title), encoding="utf-8")
    plot_score_vs_params(ranked_rows, paths["score_vs_params"])
    plot_pareto(ranked_rows, baseline, front, paths["pareto"])
    pngs = {"Score against prune_depth, kd_samples, lora_rank": paths["score_vs_params"],
            "perf against sec_per_token with the Pareto front": paths["pareto"]}
    paths["html"].write_text(render_html(ranked_rows, baseline, title, pngs), encoding="utf-8")
    n_ranked = sum(r["rank"] is not None for r in ranked_rows)
    log.info("leaderboard: %d of %d trials ranked, %d on the Pareto front -> %s", n_ranked, len(ranked_rows), len(front), out)
    return paths
