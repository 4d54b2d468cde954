"""The persona probe report: markdown and PNG, with and without the system prompt side by side.

    paths = write_report(summary, records, suite, out_dir)
    paths["report"]        # report.md: the comparison of all candidates, grouped by persona group
    paths["comparison"]    # comparison.png: pass rate and judge mean per candidate
    paths["<id>.md"], paths["<id>.png"]   # one pair per candidate (id made file-safe)

The comparison table is the users' manual habit (seed 001) made routine: the base, the fine-tune
and its quantizations of one persona in adjacent rows, each with its pass rate with and without
the system prompt, so "does the persona survive quantization / the missing system prompt" is one
glance.
"""
from __future__ import annotations

import re
from pathlib import Path

from serve.probes.probe_rules import RULE_HELP, RULES
from serve.probes.probe_suite import GROUP_HELP, GROUPS, ProbeSuite

SHORT = {"with_system": "with sys", "without_system": "w/o sys"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def file_stem(candidate_id: str) -> str:
    """A candidate id as a file name ("base:persona" -> "base_persona")."""
    return _UNSAFE.sub("_", candidate_id)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _score(judge: dict | None) -> str:
    if not judge:
        return "–"
    mean = "–" if judge["mean"] is None else f"{judge['mean']:.2f}"
    extra = [f"{judge['unparseable']} unparseable"] if judge["unparseable"] else []
    extra += [f"{judge['errors']} failed"] if judge["errors"] else []
    return mean + (f" ({', '.join(extra)})" if extra else "")


def _pair(cand: dict, get) -> str:
    """"with | without" in one cell, in the summary's condition order."""
    return " / ".join(get(s) for s in cand["conditions"].values())


def _one_line(text: str, width: int = 160) -> str:
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _ordered(candidates: list[dict]) -> list[dict]:
    # Group rows of one persona together; inside a group keep the config's order (base, sft, quant).
    first = {}
    for i, c in enumerate(candidates):
        first.setdefault(c["group"], i)
    return sorted(candidates, key=lambda c: (first[c["group"]], candidates.index(c)))


# --- markdown ------------------------------------------------------------------------------------

def comparison_markdown(summary: dict) -> str:
    conds = " / ".join(SHORT[c] for c in summary["conditions"])
    judge = summary["judge"] or "none (rules only)"
    lines = [f"# Persona probes: {summary['suite']} ({summary['persona']})", "",
             f"Judge: {judge}. Each cell reads {conds}. Status: {summary['status']}.", "",
             "## Side by side", "",
             "| group | variant | candidate | pass rate | judge mean (1-10) | " + " | ".join(RULES) + " |",
             "|---|---|---|---|---|" + "---|" * len(RULES)]
    for c in _ordered(summary["candidates"]):
        if c["error"]:
            lines.append(f"| {c['group']} | {c['variant']} | {c['id']} | FAILED: {_one_line(c['error'], 100)} | |"
                         + " |" * len(RULES))
            continue
        rules = [_pair(c, lambda s, r=r: _pct(s["rules"][r]["pass_rate"])) for r in RULES]
        lines.append(f"| {c['group']} | {c['variant']} | [{c['id']}]({file_stem(c['id'])}.md) | "
                     f"{_pair(c, lambda s: _pct(s['pass_rate']))} | {_pair(c, lambda s: _score(s['judge']))} | "
                     + " | ".join(rules) + " |")
    lines += ["", "## Probe groups", "", "| candidate | " + " | ".join(GROUPS) + " |", "|---|" + "---|" * len(GROUPS)]
    for c in _ordered(summary["candidates"]):
        if not c["error"]:
            lines.append(f"| {c['id']} | " + " | ".join(
                _pair(c, lambda s, g=g: _pct(s["groups"][g]["pass_rate"])) for g in GROUPS) + " |")
    lines += ["", "![comparison](comparison.png)", "", "## Rules", ""]
    lines += [f"- `{r}`: {RULE_HELP[r]}" for r in RULES]
    lines += ["", "Probe groups: " + "; ".join(f"`{g}` {GROUP_HELP[g]}" for g in GROUPS) + "."]
    lines += ["", "## Candidates", ""]
    lines += [f"- [{c['id']}]({file_stem(c['id'])}.md)" for c in _ordered(summary["candidates"])]
    lines += ["", summary["cost"]] if summary.get("cost") else []  # the job's cost line, last
    return "\n".join(lines) + "\n"


def candidate_markdown(cand: dict, records: list[dict], suite: ProbeSuite, conditions: list[str]) -> str:
    label = " / ".join(x for x in (cand["group"], cand["variant"]) if x)
    lines = [f"# {cand['id']}" + (f" ({label})" if label else ""), "",
             f"Model `{cand['model']}` at {cand['base_url']}; persona {suite.persona.name} (suite {suite.name}).", ""]
    if cand["error"]:
        return "\n".join(lines + [f"**Failed**: {cand['error']}", ""])
    heads = [SHORT[c] for c in conditions]
    conds = [cand["conditions"][c] for c in conditions]
    lines += [f"![{cand['id']}]({file_stem(cand['id'])}.png)", "", "| | " + " | ".join(heads) + " |",
              "|---|" + "---|" * len(heads),
              "| all probes | " + " | ".join(f"{_pct(s['pass_rate'])} ({s['passed']}/{s['probes']})" for s in conds) + " |",
              "| judge mean (1-10) | " + " | ".join(_score(s["judge"]) for s in conds) + " |"]
    for r in RULES:
        lines.append(f"| rule `{r}` | " + " | ".join(
            f"{_pct(s['rules'][r]['pass_rate'])} ({s['rules'][r]['passed']}/{s['rules'][r]['applies']})" for s in conds) + " |")
    for g in GROUPS:
        lines.append(f"| group {g} | " + " | ".join(
            f"{_pct(s['groups'][g]['pass_rate'])} ({s['groups'][g]['passed']}/{s['groups'][g]['probes']})" for s in conds) + " |")
    lines += ["", "## Facts (each asked in 2+ phrasings)", "", "| fact | expected | " + " | ".join(heads) + " |",
              "|---|---|" + "---|" * len(heads)]
    for f in suite.persona.facts:
        lines.append(f"| {f.key} | {_one_line(' / '.join(f.expected), 60)} | " + " | ".join(
            f"{s['facts'][f.key]['status']} ({s['facts'][f.key]['right']}/{s['facts'][f.key]['phrasings']})"
            for s in conds) + " |")
    failures = [r for r in records if not r["passed"]]
    lines += ["", f"## Failures ({len(failures)})", ""]
    for r in failures:
        reasons = "; ".join(f"`{name}` {o['reason']}" for name, o in r["rules"].items() if not o["passed"])
        lines.append(f"- {SHORT[r['condition']]} · `{r['probe']}` ({r['group']}): {_one_line(reasons, 240)}")
        lines.append(f"  - reply: {_one_line(r['replies'][-1])}")
    unparsed = [r for r in records if r.get("judgment") is not None and r.get("rating") is None]
    if unparsed:
        lines += ["", f"## Unparseable judgments ({len(unparsed)}): counted, not scored", ""]
        lines += [f"- {SHORT[r['condition']]} · `{r['probe']}`: {_one_line(r['judgment'])}" for r in unparsed]
    return "\n".join(lines) + "\n"


# --- plots ---------------------------------------------------------------------------------------

def _figure(width_in: float, height_in: float, ncols: int = 1):
    # Figure without pyplot: Agg rendering, no global backend state, safe in threads
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _bars(ax, labels: list[str], series: dict[str, list[float | None]], title: str, ymax: float = 1.0) -> None:
    import numpy as np

    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=name)
        # Labels tell a 0 from a missing value (n/a), which bare bars cannot.
        shown = ["n/a" if v is None else f"{v:.0%}" if ymax == 1.0 else f"{v:.1f}" for v in values]
        ax.bar_label(bars, labels=shown, fontsize=7, padding=1)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, ymax * 1.08)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def plot_candidate(cand: dict, conditions: list[str], path: Path) -> None:
    """Two panels, pass rate per rule and per probe group, one bar per condition."""
    fig, (left, right) = _figure(10, 3.8, ncols=2)
    if cand["error"]:
        left.text(0.5, 0.5, "candidate failed: no replies", transform=left.transAxes, ha="center")
        right.set_axis_off()
    else:
        conds = {SHORT[c]: cand["conditions"][c] for c in conditions}
        _bars(left, list(RULES), {n: [s["rules"][r]["pass_rate"] for r in RULES] for n, s in conds.items()},
              "pass rate per rule")
        _bars(right, list(GROUPS), {n: [s["groups"][g]["pass_rate"] for g in GROUPS] for n, s in conds.items()},
              "pass rate per probe group")
        fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", fontsize=8, ncols=2)
        judged = {n: s["judge"]["mean"] for n, s in conds.items() if s["judge"] and s["judge"]["mean"] is not None}
        if judged:
            fig.text(0.99, 0.01, "judge mean: " + ", ".join(f"{n} {v:.1f}" for n, v in judged.items()),
                     ha="right", fontsize=8)
    label = " / ".join(x for x in (cand["group"], cand["variant"]) if x)
    fig.suptitle(f"{cand['id']}" + (f" ({label})" if label else ""))
    fig.savefig(path)


def plot_comparison(summary: dict, path: Path) -> None:
    """Pass rate (left) and judge mean (right) per candidate, one bar per condition."""
    cands = [c for c in _ordered(summary["candidates"]) if not c["error"]]
    fig, (left, right) = _figure(max(6.0, 1.6 * len(cands) + 3), 3.8, ncols=2)
    labels = [c["id"] + (f"\n{c['variant']}" if c["variant"] else "") for c in cands]
    conds = summary["conditions"]
    _bars(left, labels, {SHORT[k]: [c["conditions"][k]["pass_rate"] for c in cands] for k in conds}, "pass rate (all rules)")
    if summary["judge"]:
        _bars(right, labels, {SHORT[k]: [(c["conditions"][k]["judge"] or {}).get("mean") for c in cands] for k in conds},
              "judge persona consistency (1-10)", ymax=10.0)
    else:
        right.text(0.5, 0.5, "no judge configured (rules only)", transform=right.transAxes, ha="center")
        right.set_axis_off()
    if cands:
        fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", fontsize=8, ncols=2)
    else:
        left.text(0.5, 0.5, "no candidate answered", transform=left.transAxes, ha="center")
    fig.suptitle(f"persona probes: {summary['suite']}")
    fig.savefig(path)


def write_report(summary: dict, records: list[dict], suite: ProbeSuite, out_dir: str | Path) -> dict[str, Path]:
    """Write report.md, comparison.png and one .md + .png per candidate into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.md", "comparison": out / "comparison.png"}
    paths["report"].write_text(comparison_markdown(summary), encoding="utf-8")
    plot_comparison(summary, paths["comparison"])
    for cand in summary["candidates"]:
        stem = file_stem(cand["id"])
        mine = [r for r in records if r["candidate"] == cand["id"]]
        paths[f"{stem}.md"] = out / f"{stem}.md"
        paths[f"{stem}.md"].write_text(candidate_markdown(cand, mine, suite, summary["conditions"]), encoding="utf-8")
        paths[f"{stem}.png"] = out / f"{stem}.png"
        plot_candidate(cand, summary["conditions"], paths[f"{stem}.png"])
    return paths
