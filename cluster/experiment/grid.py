"""The grid: conditions from named axes, their stable ids, their argv, and what keys a rerun.

    conditions(cfg)            # [{"model": "llama", "seed": 1}, ...] in grid order, include/exclude applied
    condition_id(cfg.name, c)  # "llama-1-3f2a1c9e0b": readable values, then a hash of (name, condition)
    render_argv(cfg.command, c)
    run_key(cfg, c, code)      # what a finished run must match to be reused
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import string
from pathlib import Path
from typing import Any

from cluster.config import ConfigError
from cluster.experiment.config import ExperimentConfig

SCRIPT_SUFFIXES = (".py", ".sh", ".bash", ".R", ".jl", ".rb", ".pl")
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def axes(cfg: ExperimentConfig) -> dict[str, list[Any]]:
    """The grid's axes, with `repeat` when `repeats` > 1."""
    out = dict(cfg.grid)
    if cfg.repeats > 1:
        out["repeat"] = list(range(cfg.repeats))
    return out


def _matches(condition: dict, partial: dict) -> bool:
    return all(k in condition and condition[k] == v for k, v in partial.items())


def conditions(cfg: ExperimentConfig, source: str = "") -> list[dict[str, Any]]:
    """Every condition: the product of the axes, minus `exclude`, plus `include` (each a full
    condition, or a partial one completed by every value of the axes it leaves out). ConfigError
    (naming `source`) for an include/exclude naming an unknown axis, or a grid left empty."""
    grid = axes(cfg)
    where = source or cfg.config_file or "experiment"
    for field in ("include", "exclude"):
        for i, partial in enumerate(getattr(cfg, field)):
            unknown = sorted(set(partial) - set(grid))
            if unknown:
                raise ConfigError(f"{where}: {field}.{i}: {unknown[0]!r} is not an axis (axes: {', '.join(grid)})")
    names = list(grid)
    out = [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]
    out = [c for c in out if not any(_matches(c, p) for p in cfg.exclude)]
    for partial in cfg.include:
        rest = [n for n in names if n not in partial]
        for values in itertools.product(*(grid[n] for n in rest)):
            c = {n: partial[n] if n in partial else dict(zip(rest, values))[n] for n in names}
            if c not in out:
                out.append(c)
    if not out:
        raise ConfigError(f"{where}: grid: no condition left (exclude removes every one)")
    return out


def condition_id(experiment: str, condition: dict[str, Any]) -> str:
    """Stable across runs, machines and the order the axes are listed in: a readable slug of the
    values (by axis name), then 10 hex digits of the sha256 of (experiment, condition) as canonical
    JSON (values of any type; 1 and "1" differ)."""
    digest = hashlib.sha256(json.dumps([experiment, condition], sort_keys=True, default=str).encode()).hexdigest()
    # values in axis-name order: the id (and reuse) must not change when a config lists its axes anew
    slug = _SLUG.sub("_", "-".join(str(condition[k]) for k in sorted(condition))).strip("_.-")[:40].strip("_.-")
    return f"{slug}-{digest[:10]}" if slug else digest[:16]


def placeholders(argv: list[str]) -> set[str]:
    """The `{name}` fields the argv uses (`{{` escapes a brace)."""
    names = set()
    for arg in argv:
        for _, name, _, _ in string.Formatter().parse(arg):
            if name is not None:
                names.add(name)
    return names


def render_argv(argv: list[str], condition: dict[str, Any]) -> list[str]:
    return [arg.format(**{k: v for k, v in condition.items()}) for arg in argv]


def script_files(cfg: ExperimentConfig, roots: tuple[Path, ...]) -> list[Path]:
    """The files the command names (an argv entry that is an existing file, found from `roots`):
    what the code hash covers. An entry that looks like a script (SCRIPT_SUFFIXES) and exists
    nowhere is a ConfigError."""
    found = []
    for i, arg in enumerate(cfg.command or []):
        if "{" in arg:
            continue
        hits = [r / arg for r in roots if (r / arg).is_file()]
        if hits:
            found.append(hits[0].resolve())
        elif arg.endswith(SCRIPT_SUFFIXES):
            where = cfg.config_file or "experiment"
            raise ConfigError(f"{where}: command.{i}: {arg}: no such file (looked in {', '.join(str(r) for r in roots)})")
    return found


def check_command(cfg: ExperimentConfig) -> None:
    """Every placeholder names an axis."""
    known = set(axes(cfg))
    for i, arg in enumerate(cfg.command or []):
        try:
            names = placeholders([arg])
        except ValueError as exc:
            raise ConfigError(f"{cfg.config_file or 'experiment'}: command.{i}: {arg!r}: {exc}") from None
        unknown = sorted(names - known)
        if unknown:
            raise ConfigError(f"{cfg.config_file or 'experiment'}: command.{i}: {{{unknown[0]}}} is not an axis "
                              f"(axes: {', '.join(sorted(known))})")


def run_key(cfg: ExperimentConfig, condition: dict[str, Any], code_sha256: str) -> str:
    """What a finished condition's run must match to be reused: the condition, the code (the
    hash of the script files or of the function's module), the command or function, and env."""
    payload = {"condition": condition, "code_sha256": code_sha256, "command": cfg.command,
               "function": cfg.function, "env": cfg.env}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
