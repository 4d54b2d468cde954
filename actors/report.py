"""The DNA job's report: distance CSV, Newick tree, heatmap and dendrogram PNGs, `report.md`
(per-model table, lineage check, cold-start amortization) and `summary.json`, as one store run
`reports/dna/<run>/`."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from actors.analysis import (
    TREE_WHY, Fingerprint, build_tree, family_pair_auroc, nearest_family_accuracy, upgma_linkage,
)
from cluster.store.storage import ArtifactStore

TIMING_PARTS = ("load_s", "gate_s", "generate_s", "embed_s", "unload_s")
HOST_PARTS = ("start_s", "imports_s", "cuda_init_s", "encoder_load_s")


# --- plots -------------------------------------------------------------------------------------
def _figure(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.55 * n + 2.5)
    return plt, plt.subplots(figsize=(size + 1.5, size))


def _placeholder(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()


# What the tree, heatmap, distances.csv and lineage figures are computed on (the outlier gate
# always reads plain cosine distance).
DISTANCE_NOTE = {
    "cosine": "Distances (tree, heatmap, distances.csv, lineage): cosine distance between DNA vectors.",
    "centered_cosine": "Distances (tree, heatmap, distances.csv, lineage): cosine distance after subtracting the mean "
                       "DNA vector of the models compared (what they all share), `analysis.distance: centered_cosine`. "
                       "The outlier gate reads plain cosine distance.",
}


def heatmap_png(ids: list[str], D: np.ndarray | None, path) -> None:
    plt, (fig, ax) = _figure(len(ids))
    if D is None or len(ids) < 2:
        _placeholder(ax, "fewer than 2 fingerprints")
    else:
        im = ax.imshow(D, cmap="viridis", vmin=0.0)
        ax.set_xticks(range(len(ids)), ids, rotation=45, ha="right")
        ax.set_yticks(range(len(ids)), ids)
        if len(ids) <= 16:
            for i in range(len(ids)):
                for j in range(len(ids)):
                    ax.text(j, i, f"{D[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if D[i, j] < 0.6 * D.max() else "black")
        fig.colorbar(im, ax=ax, label="cosine distance")
        ax.set_title("LLM-DNA cosine distance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def dendrogram_png(ids: list[str], D: np.ndarray | None, path) -> None:
    from scipy.cluster.hierarchy import dendrogram

    plt, (fig, ax) = _figure(len(ids))
    if D is None or len(ids) < 2:
        _placeholder(ax, "fewer than 2 fingerprints")
    else:
        dendrogram(upgma_linkage(D), labels=list(ids), orientation="left", ax=ax)
        ax.set_xlabel("cosine distance (UPGMA, average linkage)")
        ax.set_title("LLM-DNA dendrogram")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- report ------------------------------------------------------------------------------------
def _num(x: Any, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def _cell(text: Any) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]


def amortization(host_reports: list[dict]) -> dict[str, Any]:
    """Cold-start costs paid once per warm host vs what a fresh host per model would pay.

    Each host report: {host_id, start_s, imports_s, cuda_init_s, encoder_load_s, models: [timings]},
    the four start parts disjoint; each model's timings hold load_s ... unload_s."""
    hosts, total_fixed, total_work, total_fresh_fixed, n_models = [], 0.0, 0.0, 0.0, 0
    for h in host_reports:
        fixed = sum(float(h.get(p) or 0.0) for p in HOST_PARTS)
        models = h.get("models") or []
        n = len(models)
        swap = [float(t.get("load_s") or 0.0) + float(t.get("unload_s") or 0.0) for t in models]
        work = sum(sum(float(t.get(p) or 0.0) for p in TIMING_PARTS) for t in models)
        avg_swap = sum(swap) / n if n else 0.0
        hosts.append({
            "host_id": h.get("host_id"), "models": n, **{p: h.get(p) for p in HOST_PARTS}, "fixed_s": fixed,
            "overhead_per_model_s": (fixed / n + avg_swap) if n else None,
            "fresh_overhead_per_model_s": (fixed + avg_swap) if n else None,
        })
        total_fixed, total_work, n_models = total_fixed + fixed, total_work + work, n_models + n
        total_fresh_fixed += fixed * max(n, 1)
    warm, fresh = total_fixed + total_work, total_fresh_fixed + total_work
    return {"hosts": hosts, "models": n_models, "warm_total_s": warm, "fresh_total_s": fresh,
            "saved_s": fresh - warm, "saved_fraction": (fresh - warm) / fresh if fresh else None}


def _stat(o: dict, group: str, key: str) -> Any:
    return (o.get(group) or {}).get(key, o.get(key))


def write_report(
    store: ArtifactStore,
    *,
    outcomes: list[dict],
    fps: dict[str, Fingerprint],
    ids: list[str],
    D: np.ndarray | None,
    tree_kind: str,
    families: dict[str, str],
    suspicious: list[tuple[str, str, float]],
    host_reports: list[dict],
    cfg_summary: dict,
    published: bool,
    incidents: list[dict] | None = None,
    cost_md: list[str] | None = None,
) -> str:
    """One `reports/dna` run: distances.csv, tree.nwk (only when published), heatmap.png,
    dendrogram.png, report.md and summary.json. Complete "ok" when published (or when its one
    model's fingerprint is all there is: no tree to draw), else "failed"
    (kept for reading, never latest). Returns where report.md can be found.

    An outcome: {model_id, status, reason, attempts, stats: {valid_fraction, avg_chars},
    timings: {sec_per_prompt, load_s, gate_s, generate_s, embed_s, unload_s}}; a reused one
    (status "reused") names the run it came from in `reused_from`."""
    import tempfile
    from pathlib import Path

    run = store.new_run("reports", "dna")
    have_D = D is not None and len(ids) >= 2
    tree = build_tree(tree_kind, ids, D) if have_D else None
    md: list[str] = ["# LLM-DNA report", ""]

    # status
    # one fingerprint, every model fine: nothing to draw, nothing refused (the vector is stored)
    lone = (not have_D and len(ids) == 1 and all(o["status"] in ("ok", "reused") for o in outcomes)
            and not cfg_summary.get("missing"))
    if published:
        md.append(f"**Status: published** — {len(ids)} fingerprints, {tree_kind.upper()} tree in `tree.nwk`.")
    elif lone:
        md.append("**Status: one fingerprint** — no tree: a tree needs 2 or more fingerprints made the same way.")
    elif suspicious:
        threshold = (cfg_summary.get("gates") or {}).get("outlier_distance", cfg_summary.get("outlier_distance"))
        pairs = ", ".join(f"{a} ~ {b} ({d:.4f})" for a, b, d in suspicious)
        md.append(f"**Status: REFUSED** — suspiciously close pairs (cosine distance < {_num(threshold, 'g')}): {pairs}. "
                  "Such a pair is almost always a silent failure; verify their responses.json, or declare them "
                  "identical, before publishing.")
    else:
        md.append(f"**Status: REFUSED** — no tree published ({len(ids)} usable fingerprint(s); see the model table).")
    reused = [o for o in outcomes if o.get("status") == "reused"]
    if reused:  # a rerun (actors/dna_reuse.py): these models were not loaded by this job
        md += ["", f"Reused from earlier runs (same weights and settings; `--force` regenerates): {len(reused)} of "
               f"{len(outcomes)} fingerprints: " + "; ".join(f"{o['model_id']} ({o.get('reused_from')})" for o in reused)]
    missing = cfg_summary.get("missing") or {}
    if missing:
        md.append("")
        md.append("Models without a usable fingerprint: " + "; ".join(f"{m} ({r})" for m, r in dict(missing).items()))

    # per-model table
    md += ["", "## Models", ""]
    rows = []
    for o in outcomes:
        t = o.get("timings") or {}
        valid = _stat(o, "stats", "valid_fraction")
        rows.append([o.get("model_id"), o.get("status"), _num(100 * valid, ".0f") if valid is not None else "-",
                     _num(_stat(o, "stats", "avg_chars"), ".0f"), _num(_stat(o, "timings", "sec_per_prompt"), ".3f"),
                     *[_num(t.get(p), ".1f") for p in TIMING_PARTS], _num(t.get("tokens_per_s"), ",.0f"),
                     o.get("engine") or "-", o.get("attempts", "-"), o.get("reason") or ""])
    md += _table(["model", "status", "valid %", "avg chars", "s/prompt", "load s", "gate s", "generate s",
                  "embed s", "unload s", "tokens/s", "engine", "attempts", "reason"], rows)
    if incidents:
        md += ["", "## Hosts the job killed", "",
               "A host whose heartbeat was older than its phase's limit (STALLED in `yard status`) was killed "
               "and its model retried on a fresh host, as after a crash.", ""]
        md += _table(["host", "model", "phase", "silent s", "limit s", "then"],
                     [[i["host"], i["model_id"], i["phase"], _num(i["heartbeat_age_s"], ".0f"), _num(i["limit_s"], ".0f"),
                       next((f"{o['status']} after {o.get('attempts', '?')} attempts" for o in outcomes
                             if o.get("model_id") == i["model_id"]), "-")] for i in incidents])

    # lineage
    lineage: dict[str, Any] = {}
    md += ["", "## Lineage", ""]
    if have_D and len(set(families.get(m, m) for m in ids)) > 1:
        acc, nrows = nearest_family_accuracy(ids, D, families)
        auroc = family_pair_auroc(ids, D, families)
        scored = [r for r in nrows if r["separated"] is not None]
        sep = sum(bool(r["separated"]) for r in scored)
        lineage = {"nearest_family_accuracy": acc, "family_pair_auroc": auroc, "separated": sep,
                   "scored": len(scored), "rows": nrows}
        md.append(f"Nearest-family accuracy: **{_num(acc, '.0%')}**; same- vs cross-family pair AUROC: "
                  f"**{_num(auroc, '.3f')}**; separated from every other family: {sep}/{len(scored)} models.")
        md.append("")
        md.append(DISTANCE_NOTE[((cfg_summary.get("analysis") or {}).get("distance") or "cosine")])
        md.append("")
        yes = {True: "yes", False: "**no**", None: "-"}
        md += _table(["model", "family", "nearest", "its family", "distance", "hit", "separated"],
                     [[r["model"], r["family"], r["nearest"], r["nearest_family"], _num(r["distance"], ".4f"),
                       yes[r["hit"]], yes[r["separated"]]] for r in nrows])
    else:
        md.append("Not enough fingerprints or families to measure lineage.")

    # cold start
    amort = amortization(host_reports)
    md += ["", "## Cold-start amortization", ""]
    if amort["hosts"]:
        md += _table(["host", "models", "start s", "imports s", "CUDA init s", "encoder load s", "fixed s",
                      "overhead/model (warm) s", "overhead/model (fresh host) s"],
                     [[h["host_id"], h["models"], *[_num(h[p], ".1f") for p in HOST_PARTS], _num(h["fixed_s"], ".1f"),
                       _num(h["overhead_per_model_s"], ".1f"), _num(h["fresh_overhead_per_model_s"], ".1f")]
                      for h in amort["hosts"]])
        md += ["", f"Warm hosts: {_num(amort['warm_total_s'], '.1f')} s for {amort['models']} models; a fresh host per "
               f"model (start + load + unload each time) would take {_num(amort['fresh_total_s'], '.1f')} s "
               f"(saved {_num(amort['saved_s'], '.1f')} s, {_num(amort['saved_fraction'], '.0%')})."]
    else:
        md.append("No host reports.")

    # tree and settings
    md += ["", "## Tree", "", f"Method: {TREE_WHY[tree_kind]}. The dendrogram (`dendrogram.png`) is UPGMA either way."]
    if tree is not None:
        md.append("" if published else "Not published (see status); the tree is withheld.")
        if published:
            md += ["```", tree.newick(), "```"]
    prov = next(iter(fps.values())).provenance if fps else {}
    md += ["", "## Settings", "", "```json", json.dumps({"provenance": prov, **cfg_summary}, indent=1, default=str), "```", ""]
    if cost_md:  # last: every job's report ends with its own cost line
        md += [*cost_md, ""]

    # files
    if have_D:
        csv = ["model," + ",".join(ids)] + [f"{m}," + ",".join(f"{x:.6f}" for x in D[i]) for i, m in enumerate(ids)]
    else:
        csv = ["model"] + list(ids)
    run.put_bytes("distances.csv", ("\n".join(csv) + "\n").encode())
    if published and tree is not None:
        run.put_bytes("tree.nwk", (tree.newick() + "\n").encode())
    with tempfile.TemporaryDirectory() as tmp:
        for name, draw in (("heatmap.png", heatmap_png), ("dendrogram.png", dendrogram_png)):
            draw(ids, D if have_D else None, Path(tmp) / name)
            run.put_file(name, Path(tmp) / name)
    report_key = run.put_bytes("report.md", "\n".join(md).encode())
    run.put_json("summary.json", {
        "status": "published" if published else "one fingerprint" if lone else "refused", "published": published,
        "tree_kind": tree_kind,
        "models": ids, "distances": D.tolist() if have_D else None,
        "suspicious": [list(p) for p in suspicious], "missing": missing,
        "runs": {m: fp.run for m, fp in fps.items()}, "newick": tree.newick() if (published and tree) else None,
        "lineage": lineage, "amortization": amort, "provenance": prov, "settings": cfg_summary,
        "outcomes": [{**{k: o.get(k) for k in ("model_id", "status", "reason", "attempts")},
                      **({"reused_from": o["reused_from"]} if o.get("reused_from") else {})} for o in outcomes],
        "incidents": incidents or [],
    })
    run.complete(status="ok" if published or lone else "failed")
    return store.locate(report_key)
