"""What a finished sweep leaves behind: the store run sweep/<name>/<run> (leaderboard, plots, rows,
the ranking as data, summary, timing), its best candidates registered as zoo children, and the
table on the console."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from cluster.models.zoo import register_child, zoo_dir_of
from cluster.store.storage import ArtifactStore
from tune.config import SweepConfig
from tune.sweep.watchdog import incidents_markdown

log = logging.getLogger(__name__)

SWEEP_KIND = "sweep"
# the ranking as data: `yard serve --from-leaderboard` reads it without importing the sweep
RANKED_FILE = "ranked.json"


def _lineage_kind(config: dict) -> str:
    """The registry's derivation word for a recipe: the step that changed the most."""
    if int(config["prune_depth"]) or float(config.get("ffn_keep_ratio", 1.0)) < 1.0:
        return "pruned"
    if int(config["kd_samples"]):
        return "distilled"
    if int(config["lora_rank"]):
        return "lora_merged"
    return "quantized" if config["quant"] != "none" else "other"


def register_candidates(store: ArtifactStore, rows: list[dict], cfg: SweepConfig, registry_paths: list[str]) -> list[str]:
    """The best `cfg.register_top` candidates join the zoo's lineage as children of the base, under
    stable ids `<sweep>.<recipe>` (rerunning a sweep replaces its entries instead of piling up).
    Local stores only: the zoo registry points at local model dirs."""
    from tune.sweep.leaderboard import rank_rows
    from tune.sweep.trial import CANDIDATE_FILE

    zoo_dir = zoo_dir_of(cfg.base, registry_paths)
    if not cfg.register_top or zoo_dir is None or store.uri.startswith("s3://"):
        why = "register_top is 0" if not cfg.register_top else "the base is not a zoo model" if zoo_dir is None else "S3 store"
        log.info("candidates not registered in a zoo: %s", why)
        return []
    added: list[str] = []
    for row in [r for r in rank_rows(rows) if r.get("rank") and r.get("candidate")][:cfg.register_top]:
        info = store.get_json(f"{row['candidate']}/{CANDIDATE_FILE}")
        model_id = f"{cfg.name}.{info['derivation']}"
        if model_id in added:  # two trials of one recipe (sampled dimensions): keep both
            model_id = f"{model_id}.{row['trial_id']}"
        register_child(zoo_dir, model_id, Path(store.uri) / row["candidate"] / "model", parent=cfg.base,
                       derivation=_lineage_kind(info["config"]), replace=True,
                       notes=f"sweep {info['sweep']} run {info['sweep_run']} trial {info['trial_id']}: "
                             f"{info['derivation']}, Score {row['score']}")
        added.append(model_id)
    return added


def publish(store: ArtifactStore, cfg: SweepConfig, run: str, rows: list[dict], baseline: dict, summary: dict,
            timing: dict | None = None) -> str:
    """Leaderboard (md, csv, html), plots, rows, summary and the timing phase's raw figures as the
    store run sweep/<name>/<run>."""
    from tune.sweep.leaderboard import rank_rows, write_leaderboard

    writer = store.new_run(SWEEP_KIND, cfg.name, name=run)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_leaderboard(rows, baseline, Path(tmp), title=f"sweep {cfg.name} ({run}) on {cfg.base}")
        killed = incidents_markdown(summary.get("incidents") or [])
        if summary.get("timing_failed"):
            killed = (f"\n## The timing phase failed\n\n{summary['timing_failed']}\n\nsec_per_token, speed_norm "
                      "and the Score are each trial's own, timed beside the other trials. `yard sweep CONFIG "
                      "--resume` times the models again, alone, and keeps every trial.\n") + killed
        cost = "\n".join(summary.get("cost_md") or [])  # last: the leaderboard ends with its cost line
        if killed or cost:
            with open(paths["md"], "a", encoding="utf-8") as md:
                md.write(killed + cost)
        for path in paths.values():
            writer.put_file(Path(path).name, path)
    writer.put_json("rows.json", rows)
    writer.put_json(RANKED_FILE, rank_rows(rows))
    writer.put_json("baseline.json", baseline)
    writer.put_json("summary.json", summary)
    if timing is not None:
        writer.put_json("timing.json", timing)
    writer.complete(trials=len(rows), ok=sum(r["status"] == "ok" for r in rows))
    return writer.prefix


def print_rows(rows: list[dict], summary: dict) -> None:
    from rich.table import Table

    from cluster.console import console as make_console
    from tune.sweep.leaderboard import rank_rows

    scored = summary.get("scored", summary["ok"])
    title = f"yard sweep {summary['sweep']}: {scored}/{summary['trials']} scored"
    if scored != summary["ok"]:  # evaluated without a Score: the base's perf was 0
        title += f", {summary['ok']} evaluated"
    table = Table(title=title)
    for col in ("rank", "trial", "depth", "kd", "rank r", "quant", "perf", "s/token", "Score", "±", "MB", "status"):
        table.add_column(col, overflow="fold")
    fmt = lambda v, s: "-" if v is None else s.format(v)  # noqa: E731
    for r in rank_rows(rows):
        table.add_row(str(r.get("rank") or "-"), r["trial_id"], str(r["prune_depth"]), str(r["kd_samples"]),
                      str(r["lora_rank"]), str(r["quant"]), fmt(r.get("perf"), "{:.4f}"),
                      fmt(r.get("sec_per_token"), "{:.6f}"),
                      fmt(r.get("score"), "{:.4f}") + (" ≈" if r.get("within_noise") else ""),
                      fmt(r.get("score_spread"), "{:.4f}"), fmt(r.get("size_mb"), "{:.2f}"),
                      r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('error') or ''}")
    console = make_console()
    console.print(table)
    timing = summary.get("timing")
    if summary.get("timing_failed"):
        console.print(f"[red]timing phase failed[/]: {summary['timing_failed']}; speed is each trial's own "
                      "(timed beside other trials); --resume times them again")
    if timing:
        console.print(f"speed: every model timed alone after the trials, {timing['rounds']} interleaved rounds of "
                      f"{timing['prompts']} prompts x {timing['new_tokens']} tokens "
                      f"(fastest runs; ± = half the range over rounds; ≈ = within noise of the row above)")
    rate = f"{summary['trials_per_hour']} trials/hour" if summary.get("trials_per_hour") else "no trial ran in this job"
    console.print(f"teacher forward passes: {summary['teacher_forward_passes']} (once per sweep); "
                  f"{rate}; leaderboard: {summary['report']}")
    console.print(f"TensorBoard: tensorboard --logdir {summary['tune_dir']}")
