"""The persona job's report: prep counts, training per stage, loss curves, plan beside actual
figures, lineage, and the probe results of base and child, with and without the system prompt, side
by side."""
from __future__ import annotations

from pathlib import Path

from tune.persona.config import PersonaConfig
from tune.persona.plan import Plan, actual_markdown


def _num(value, fmt: str = "{:.4f}") -> str:
    return "-" if value is None or value != value else fmt.format(value)  # NaN != NaN


def _probe_columns(probe: dict) -> list[tuple[str, dict | None]]:
    """(header, condition summary or None when that candidate failed) per report column: for each
    condition, the base (when it was probed) beside the merged child."""
    cands = probe["candidates"]
    child = next(c for c in cands if c["variant"] == "merged")
    base = next((c for c in cands if c["variant"] == "base"), None)
    cols = []
    for cond in probe["conditions"]:
        label = cond.replace("_", " ")
        for name, cand in ((("base", base), ("child", child)) if base else (("", child),)):
            cols.append((f"{name}, {label}" if name else label, None if cand["error"] else cand["conditions"][cond]))
    return cols


def probe_markdown(probe: dict | None) -> list[str]:
    """The probe results as one table: base and merged child side by side under each condition
    (with and without the system prompt): all probes, each group, each fact, the judge mean."""
    if probe is None:
        return ["Probes disabled (probe.enabled: false)."]
    failed = [c for c in probe["candidates"] if c.get("error")]
    if any(c["variant"] == "merged" for c in failed):
        return [f"The probe of the merged model failed: {failed[0]['error']}"]
    cols = _probe_columns(probe)
    first = next(s for _, s in cols if s is not None)

    def row(label: str, cell) -> str:
        return f"| {label} | " + " | ".join("failed" if s is None else cell(s) for _, s in cols) + " |"

    lines = ["| | " + " | ".join(h for h, _ in cols) + " |", "|---|" + "---|" * len(cols),
             row("all probes passed", lambda s: f"{s['passed']}/{s['probes']} ({_num(s['pass_rate'], '{:.0%}')})")]
    for group in first["groups"]:
        lines.append(row(group, lambda s, g=group: f"{_num(s['groups'][g]['pass_rate'], '{:.0%}')} "
                                                    f"({s['groups'][g]['passed']}/{s['groups'][g]['probes']})"))
    for fact in first["facts"]:
        lines.append(row(f"fact {fact}", lambda s, f=fact: s["facts"][f]["status"]))
    if first.get("judge") is not None:
        lines.append(row("judge mean (1-10)", lambda s: _num(s["judge"]["mean"], "{:.2f}")))
    lines += ["", f"Full probe report: {probe['report']}"]
    if failed:
        lines += [""] + [f"- the probe of {c['id']} failed: {c['error']}" for c in failed]
    if probe.get("judge_replayed"):
        lines += ["", "**Judge: replayed** (deterministic fake ratings from a replay server; no judge model ran, "
                  "the judge scores measure nothing; the rule checks are real)."]
    elif probe.get("judge") is None:
        lines += ["", "No judge configured: rule checks only."]
    return lines


def write_report(cfg: PersonaConfig, summary: dict, plan: Plan, stages: list[dict], out_dir: Path) -> dict[str, Path]:
    """report.md and losses.png into `out_dir`; returns {"report": path, "losses": path}."""
    from tune.persona.train import StageResult

    out_dir.mkdir(parents=True, exist_ok=True)
    losses = plot_losses([StageResult(**s) for s in stages], out_dir / "losses.png")
    prep = summary["prep"]
    child = summary["child"]
    lines = [f"# Persona fine-tune {cfg.name} on {cfg.base}", "",
             f"Run `{summary['prefix']}`; template options {cfg.chat_template_kwargs} in training and probing; "
             f"LoRA r {cfg.lora.r}, alpha {cfg.lora.alpha}, dropout {cfg.lora.dropout}.", "",
             "## Data", "",
             f"{prep['sft_rows']} SFT rows (+{prep['sft_held_out_rows']} held out), {prep['dpo_rows']} DPO pairs "
             f"(+{prep['dpo_held_out_rows']} held out); {prep['bad_lines']} bad lines kept out, "
             f"{prep['duplicates']} duplicates, {prep['stripped_system']} system messages stripped; recommended "
             f"max_length {prep['recommended_max_length']}. Details: prep_report.md, lengths.png.", "",
             "## Training", "",
             "| stage | backend | steps | train loss (mean) | first -> last step | held-out loss | train s "
             "| tokens/s | device | optimizer | checkpointing | peak GPU GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in stages:
        logged = [r["loss"] for r in s["log"] if r.get("loss") is not None]
        ends = f"{_num(logged[0], '{:.2f}')} -> {_num(logged[-1], '{:.2f}')}" if logged else "-"
        # what really ran (tune/persona/train.py: _ran_with), beside the recipe's adamw_8bit / "unsloth"
        lines.append(f"| {s['stage']} | {s['backend']} | {s['steps']} | {_num(s['train_loss'])} | {ends} "
                     f"| {_num(s['eval_loss'])} | {s['seconds']:.1f} | {s['tokens_per_s']:.0f} "
                     f"| {s.get('device') or '-'} | {s.get('optim') or '-'} | {s.get('gradient_checkpointing') or '-'} "
                     f"| {_num(s.get('peak_gpu_mem_gib'), '{:.1f}')} |")
    if summary.get("dpo_skipped"):
        lines += ["", f"DPO skipped: {summary['dpo_skipped']}."]
    if summary.get("incidents"):
        lines += ["", "## Stages the job killed", "",
                  "| stage | phase | heartbeat age (s) | limit (s) | rerun |", "|---|---|---|---|---|"]
        lines += [f"| {i['task']} | {i['phase']} | {i['heartbeat_age_s']} | {i['limit_s']:g} | "
                  f"{'yes' if i['retried'] else 'no'} |" for i in summary["incidents"]]
    lines += ["", "![losses](losses.png)", "", "## Plan and actual", "",
              actual_markdown(plan, summary["actual_s"], {s["stage"]: s["steps"] for s in stages}), "",
              "Actual seconds are each Ray task's wall time (model load included) on this run's hardware, priced "
              "at the chosen GPU type's rate.", "", "## Outputs", "",
              f"- merged model ({cfg.merge.dtype}): {summary['model']}"]
    for g in summary.get("gguf") or []:
        lines.append(f"- GGUF {g['quant']}: {g['file'] or 'skipped'} ({g['message']})")
    if not cfg.gguf.enabled:
        lines.append("- GGUF: not enabled (gguf.enabled: false)")
    lines.append(f"- lineage: {child['id']} as a persona child of {cfg.base}" if child["registered"]
                 else f"- lineage: not registered ({child['why']})")
    lines += ["", "## Probes: base and child, with and without the system prompt", ""]
    lines += probe_markdown(summary.get("probe"))
    if summary.get("cost"):  # last: every job's report ends with its own cost line
        lines += ["", summary["cost"]]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"report": report, "losses": losses}


def plot_losses(results: list, out_png) -> Path:
    """One panel per stage (`tune.persona.train.StageResult`s): training loss per step, held-out loss
    where logged. Returns the PNG path."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        from tune.persona.train import TrainError

        raise TrainError("results: no stages to plot")
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5), squeeze=False)
    for ax, res in zip(axes[0], results):
        for key, style in (("loss", "-"), ("eval_loss", "o--")):
            points = [(r["step"], r[key]) for r in res.log if key in r and r[key] is not None
                      and math.isfinite(r[key])]
            if points:
                ax.plot(*zip(*points), style, label="held-out" if key == "eval_loss" else "train")
        ax.set_title(f"{res.stage.upper()} ({res.backend})")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
