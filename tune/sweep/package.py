"""Package a sweep's best trials as submissions: `submit_<rank>.zip` holding `model/` only.

A sweep run lives in the store as kind "sweep", model_id = the sweep name, with rows.json (one
row per trial), baseline.json, leaderboard.* and the plots. Each ok trial's row names its
candidate run (`candidate`, a store key prefix); the saved model is under `<candidate>/model/`.
A submission is what the users' evaluator serves: weights, config and tokenizer, nothing else
(no recipe, training args or optimizer state).

    paths = package_top(store, "prune-kd", top=3, out_dir="submissions")   # [submit_1.zip, ...]

    yard package prune-kd --top 3 --out submissions
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import numbers
import os
import tempfile
import zipfile
from pathlib import Path

from cluster.config import UserError
from cluster.store.runs import RunRefError, find_run
from cluster.store.storage import ArtifactStore, RunInfo, open_store
from tune.sweep.leaderboard import rank_rows
from tune.sweep.publish import SWEEP_KIND

log = logging.getLogger(__name__)

ROWS_FILE = "rows.json"
BASELINE_FILE = "baseline.json"
MODEL_DIR = "model"
# What a submission's model/ may hold; everything else in the candidate's model/ is left out.
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "added_tokens.json")


class PackageError(UserError, ValueError):
    """A sweep that cannot be packaged as asked, phrased as one line naming what exists."""


def is_submission_file(name: str) -> bool:
    """True for the files a submission's model/ keeps: weights (*.safetensors and their index),
    config.json, generation_config.json and tokenizer files."""
    return name in CONFIG_FILES or name in TOKENIZER_FILES or any(fnmatch.fnmatch(name, p) for p in WEIGHT_PATTERNS)


def find_sweep_run(store: ArtifactStore, ref: str) -> RunInfo:
    """The sweep run `ref` names (`cluster.store.runs.find_run`: "NAME", "NAME/RUN" or "sweep/NAME/RUN");
    PackageError naming the stored sweeps (or the sweep's runs) when `ref` matches none."""
    try:
        return find_run(store, SWEEP_KIND, ref)
    except RunRefError as exc:
        raise PackageError(str(exc)) from None


def load_rows(store: ArtifactStore, run: RunInfo) -> list[dict]:
    """The trial rows of a sweep run (its rows.json)."""
    rows = store.get_json(f"{run.prefix}/{ROWS_FILE}")
    if not isinstance(rows, list):
        raise PackageError(f"{run.prefix}/{ROWS_FILE}: expected a JSON list of trial rows, got {type(rows).__name__}")
    return rows


def _model_files(store: ArtifactStore, row: dict) -> dict[str, str]:
    """{file name: store key} of the submission files in the trial's candidate model/ folder;
    PackageError when it lacks config.json or weights, or its index names a missing shard."""
    candidate = row.get("candidate")
    tid = row["trial_id"]
    if not isinstance(candidate, str) or not candidate.strip("/"):
        raise PackageError(f"trial {tid!r}: its row names no candidate run (candidate={candidate!r})")
    folder = f"{candidate.strip('/')}/{MODEL_DIR}/"
    keys = store.list_keys(folder)
    # top-level files only: checkpoint-*/ and other subfolders are training leftovers
    files = {k[len(folder):]: k for k in keys if "/" not in k[len(folder):]}
    kept = {name: key for name, key in files.items() if is_submission_file(name)}
    if "config.json" not in kept or not any(n.endswith(".safetensors") for n in kept):
        have = ", ".join(sorted(files)) or "nothing"
        raise PackageError(f"trial {tid!r}: {folder} needs config.json and *.safetensors weights (has: {have})")
    for index_name in (n for n in kept if n.endswith(".safetensors.index.json")):
        shards = set(json.loads(store.get_bytes(kept[index_name])).get("weight_map", {}).values())
        missing = sorted(shards - set(kept))
        if missing:
            raise PackageError(f"trial {tid!r}: {folder}{index_name} names shards that are not stored: {', '.join(missing)}")
    left_out = sorted(set(files) - set(kept)) + sorted(k[len(folder):] for k in keys if "/" in k[len(folder):])
    if left_out:
        log.info("trial %s: left out of the submission: %s", tid, ", ".join(left_out))
    return kept


def _write_zip(store: ArtifactStore, files: dict[str, str], dest: Path) -> None:
    """Download `files` and zip them as model/<name>; the zip appears at `dest` only when whole."""
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".package-") as tmp:
        tmp_zip = Path(tmp) / dest.name
        with zipfile.ZipFile(tmp_zip, "w") as zf:
            for name in sorted(files):
                local = Path(tmp) / MODEL_DIR / name
                store.download(files[name], local)
                # weights barely compress and are large: store them; deflate the small text files
                method = zipfile.ZIP_STORED if name.endswith(".safetensors") else zipfile.ZIP_DEFLATED
                zf.write(local, f"{MODEL_DIR}/{name}", compress_type=method)
                local.unlink()
        os.replace(tmp_zip, dest)


def package_top(store: ArtifactStore, ref: str, top: int, out_dir, *, overwrite: bool = False) -> list[Path]:
    """Write `submit_<rank>.zip` into `out_dir` for the `top` best ranked trials of the sweep run
    `ref` (see find_sweep_run), each holding only model/<file> for the weights, config and
    tokenizer files of the trial's candidate. Returns the zip paths, best first.

    Reads the store only (never deletes). Checks everything before writing any zip: PackageError
    when `top` is not in 1..(ranked trials), a chosen trial has no usable candidate model, or a
    zip exists already and `overwrite` is False."""
    run = find_sweep_run(store, ref)
    ranked = [r for r in rank_rows(load_rows(store, run)) if r["rank"] is not None]
    if not ranked:
        raise PackageError(f"top: {run.prefix} has no ok trial with a score to package")
    if isinstance(top, bool) or not isinstance(top, numbers.Integral) or not 1 <= top <= len(ranked):
        raise PackageError(f"top: {top!r} is not in 1..{len(ranked)} ({run.prefix} has {len(ranked)} ranked trials)")
    chosen = ranked[:top]
    out = Path(out_dir)
    dests = [out / f"submit_{row['rank']}.zip" for row in chosen]
    existing = [d.name for d in dests if d.exists()]
    if existing and not overwrite:
        raise PackageError(f"out_dir {out}: {', '.join(existing)} already exist (pass overwrite=True / --overwrite to replace)")
    plans = [_model_files(store, row) for row in chosen]
    out.mkdir(parents=True, exist_ok=True)
    for row, files, dest in zip(chosen, plans, dests):
        _write_zip(store, files, dest)
        log.info("submit_%d.zip: trial %s (Score %.4f) from %s, %d files, %.1f MB", row["rank"], row["trial_id"],
                 row["score"], row["candidate"], len(files), dest.stat().st_size / 1e6)
    return dests


def main(argv: list[str] | None = None) -> int:
    """`yard package RUN --top N [--out DIR] [--store URI] [--overwrite]`."""
    parser = argparse.ArgumentParser(prog="yard package", description="zip the best N trials of a sweep as submit_<rank>.zip")
    parser.add_argument("run", help="sweep NAME (its latest complete run), NAME/RUN_NAME or sweep/NAME/RUN_NAME")
    parser.add_argument("--top", type=int, default=1, help="how many of the best trials to package (default 1)")
    parser.add_argument("--out", default="submissions", help="folder for the zips (default: submissions)")
    parser.add_argument("--store", default=os.environ.get("YARD_STORE", ".yard"), help="store URI (default: $YARD_STORE or .yard)")
    parser.add_argument("--endpoint-url", help="S3 endpoint (default: $YARD_S3_ENDPOINT_URL, else boto3's $AWS_ENDPOINT_URL)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing submit_*.zip files")
    args = parser.parse_args(argv)
    store = open_store(args.store, args.endpoint_url)
    for path in package_top(store, args.run, args.top, args.out, overwrite=args.overwrite):
        print(f"wrote {path}")
    return 0

