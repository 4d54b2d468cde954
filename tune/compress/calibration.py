"""Calibration texts for a sweep: Block Influence, distillation, the LoRA heal, GPTQ and the
validation loss all read the same deterministic list.

Sources: `zoo:<topic>,<topic>` (the toy zoo's bundled corpus), a `.txt` file (blank-line separated
blocks) or a `.jsonl` file (a `text` string or a chat `messages` list per line). Chats are rendered
with the base model's chat template, so calibration looks like what the model was trained on.
The list is shuffled with a fixed seed (topics mix) and split: the first `count` texts calibrate,
the next `holdout` texts give the validation loss.
"""
from __future__ import annotations

import random
from pathlib import Path

from cluster.config import ConfigError, jsonl_rows, read_text
from cluster.config import resolve_config_path
from tune.config import CalibrationConfig


def _zoo_items(topics: str) -> list:
    from cluster.models.zoo_train import corpus_topics, read_corpus

    names = [t.strip() for t in topics.split(",") if t.strip()]
    known = corpus_topics()
    bad = [t for t in names if t not in known]
    if not names or bad:
        raise ConfigError(f"calibration.source: zoo:{topics}: unknown topic(s) {bad or '(none given)'} "
                          f"(allowed: {', '.join(known)})")
    items = []
    for doc in read_corpus(names):
        items.append([{"role": r, "content": c} for r, c in doc.chat] if doc.chat else doc.text)
    return items


def _file_items(path: Path) -> list:
    if not path.is_file():
        raise ConfigError(f"calibration.source: {path}: no such file")
    text = read_text(path, "calibration file")
    if path.suffix == ".txt":
        return [" ".join(b.split()) for b in text.split("\n\n") if b.strip()]
    if path.suffix != ".jsonl":
        raise ConfigError(f"calibration.source: {path}: unsupported file type (allowed: .txt, .jsonl, zoo:<topics>)")
    items = []
    for n, row in jsonl_rows(text, path, ConfigError):
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            items.append(row["text"])
        elif isinstance(row, dict) and isinstance(row.get("messages"), list):
            items.append(row["messages"])
        else:
            raise ConfigError(f"{path}:{n}: text: expected a `text` string or a `messages` list")
    return items


def load_items(cfg: CalibrationConfig, config_path: str | Path | None = None) -> list:
    """The source's items (strings or chat message lists), unrendered, shuffled with a fixed seed
    and cut to `count + holdout`. ConfigError (one line, naming calibration.*) when the source
    is unknown, empty, or smaller than count + holdout."""
    if cfg.source.startswith("zoo:"):
        items = _zoo_items(cfg.source[4:])
    else:
        items = _file_items(resolve_config_path(cfg.source, config_path))
    items = [i for i in items if (i.strip() if isinstance(i, str) else i)]
    if not items:
        raise ConfigError(f"calibration.source: {cfg.source}: empty calibration set")
    need = cfg.count + cfg.holdout
    if len(items) < need:
        raise ConfigError(f"calibration.count: {cfg.source} has {len(items)} texts; count {cfg.count} + "
                          f"holdout {cfg.holdout} = {need} needed")
    random.Random(0).shuffle(items)
    return items[:need]


def render(items: list, tokenizer) -> list[str]:
    """Plain strings as they are; chats through the tokenizer's chat template (no generation prompt)."""
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        else:
            out.append(tokenizer.apply_chat_template(item, tokenize=False))
    return out


def split(texts: list[str], cfg: CalibrationConfig) -> tuple[list[str], list[str]]:
    """(calibration texts, holdout texts)."""
    return texts[:cfg.count], texts[cfg.count:cfg.count + cfg.holdout]
