"""The persona job's report: prep counts, training per stage, loss curves, plan beside actual
figures, lineage, and the probe results with and without the system prompt side by side."""
from __future__ import annotations

from pathlib import Path

from tune.persona.config import PersonaConfig
from tune.persona.plan import Plan, actual_markdown


def _num(value, fmt: str = "{:.4f}") -> str:
    return "-" if value is None or value != value else fmt.format(value)  # NaN != NaN


def probe_markdown(probe: dict | None) -> list[str]:
    """Both conditions of the merged model's probe run as columns: pass rates, per group, facts, judge."""
    if probe is None:
        return ["Probes disabled (probe.enabled: false)."]
    cand = probe["candidates"][0]
    if cand.get("error"):
        return [f"The probe of the merged model failed: {cand['error']}"]
    conds = list(cand["conditions"])
    lines = ["| | " + " | ".join(c.replace("_", " ") for c in conds) + " |", "|---|" + "---|" * len(conds)]
    get = lambda c: cand["conditions"][c]  # noqa: E731
    lines.append("| all probes passed | " + " | ".join(
        f"{get(c)['passed']}/{get(c)['probes']} ({_num(get(c)['pass_rate'], '{:.0%}')})" for c in conds) + " |")
    for group in get(conds[0])["groups"]:
        lines.append(f"| {group} | " + " | ".join(_num(get(c)["groups"][group]["pass_rate"], "{:.0%}") for c in conds) + " |")
    for fact in get(conds[0])["facts"]:
        lines.append(f"| fact {fact} | " + " | ".join(get(c)["facts"][fact]["status"] for c in conds) + " |")
    if get(conds[0]).get("judge") is not None:
        lines.append("| judge mean (1-10) | " + " | ".join(_num(get(c)["judge"]["mean"], "{:.2f}") for c in conds) + " |")
    lines += ["", f"Full probe report: {probe['report']}"]
    if probe.get("judge_replayed"):
        lines += ["", "**Judge: replayed** (deterministic fake ratings from a replay server; no judge model ran, "
                  "the judge scores measure nothing; the rule checks are real)."]
    elif probe.get("judge") is None:
        lines += ["", "No judge configured: rule checks only."]
    return lines


def write_report(cfg: PersonaConfig, summary: dict, plan: Plan, stages: list[dict], out_dir: Path) -> dict[str, Path]:
    """report.md and losses.png into `out_dir`; returns {"report": path, "losses": path}."""
    from tune.persona.train import StageResult, plot_losses

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
             "| stage | backend | steps | train loss | held-out loss | train s | tokens/s |", "|---|---|---|---|---|---|---|"]
    for s in stages:
        lines.append(f"| {s['stage']} | {s['backend']} | {s['steps']} | {_num(s['train_loss'])} | {_num(s['eval_loss'])} "
                     f"| {s['seconds']:.1f} | {s['tokens_per_s']:.0f} |")
    if summary.get("dpo_skipped"):
        lines += ["", f"DPO skipped: {summary['dpo_skipped']}."]
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
    lines += ["", "## Probes: with and without the system prompt", ""] + probe_markdown(summary.get("probe"))
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"report": report, "losses": losses}
