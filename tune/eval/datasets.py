"""Benchmark loaders: local JSONL / JSON / Parquet, or a Hugging Face dataset id when reachable.

Schemas (extra fields are kept, not checked):
- MCQ (KMMLU-Pro / KMMLU-Redux): `question: str`, `options: list[str]` (2 or more), `solution: int`
  (1-indexed into options).
- QA (Ko-LongRAG): `context: str`, `question: str`, `answers: list[str]` (`[]` = unanswerable).

A bad row fails at load time with one line, `file:line: field: what is wrong`, as
`BenchmarkSchemaError`; JSONL rows are located by line, JSON and Parquet rows by `row N`.

    >>> items = load_mcq("configs/bench/kmmlu_sample.jsonl")
    >>> items[0]["solution"] in range(1, len(items[0]["options"]) + 1)
    True
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from cluster.config import UserError, jsonl_rows, read_text

_HF_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class BenchmarkSchemaError(UserError, ValueError):
    """A benchmark row that does not fit its schema, phrased as `file:line: field: what is wrong`."""


class BenchmarkSourceError(UserError, RuntimeError):
    """A benchmark that cannot be read at all: missing file, unknown format, unreachable dataset id."""


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(location, row) pairs; the location is what an error message names."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        text = read_text(path, "benchmark file", BenchmarkSchemaError)
        return [(f"{path}:{number}", row) for number, row in jsonl_rows(text, path, BenchmarkSchemaError)]
    if suffix == ".json":
        try:
            data = json.loads(read_text(path, "benchmark file", BenchmarkSchemaError))
        except json.JSONDecodeError as exc:
            raise BenchmarkSchemaError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, list):
            raise BenchmarkSchemaError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        return [(f"{path}: row {i}", row) for i, row in enumerate(data, start=1)]
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise BenchmarkSourceError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or pass JSONL") from None
        return [(f"{path}: row {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist(), start=1)]
    raise BenchmarkSourceError(f"{path}: unknown benchmark format {suffix or '(none)'} (allowed: .jsonl, .json, .parquet)")


def _hf_rows(dataset_id: str, split: str) -> list[tuple[str, dict]]:
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    hint = "pass a local .jsonl/.json/.parquet file in the same schema"
    if offline:
        raise BenchmarkSourceError(f"{dataset_id}: Hugging Face dataset unreachable (offline mode); {hint}")
    try:
        import datasets

        rows = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # no network, no such dataset, gated: all mean "use a local file"
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise BenchmarkSourceError(f"{dataset_id}: Hugging Face dataset unreachable ({reason}); {hint}") from None
    return [(f"{dataset_id}[{split}]: row {i}", dict(row)) for i, row in enumerate(rows, start=1)]


def _load(source: str | Path, split: str, check: Callable[[str, dict], None]) -> list[dict]:
    path = Path(source)
    if path.exists():
        rows = _rows(path)
    elif _HF_ID.match(str(source)):
        rows = _hf_rows(str(source), split)
    else:
        raise BenchmarkSourceError(f"{source}: no such file (nor a Hugging Face id like org/name)")
    if not rows:
        raise BenchmarkSchemaError(f"{source}: no rows")
    for where, row in rows:
        if not isinstance(row, dict):
            raise BenchmarkSchemaError(f"{where}: expected an object, got {type(row).__name__}")
        check(where, row)
    return [row for _, row in rows]


def _text(where: str, row: dict, field: str) -> None:
    if field not in row:
        raise BenchmarkSchemaError(f"{where}: {field}: missing")
    if not isinstance(row[field], str) or not row[field].strip():
        raise BenchmarkSchemaError(f"{where}: {field}: expected non-empty text, got {row[field]!r}")


def _check_mcq(where: str, row: dict) -> None:
    _text(where, row, "question")
    options = row.get("options")
    if "options" not in row:
        raise BenchmarkSchemaError(f"{where}: options: missing")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise BenchmarkSchemaError(f"{where}: options: expected a list of 2 or more strings, got {options!r}")
    if "solution" not in row:
        raise BenchmarkSchemaError(f"{where}: solution: missing")
    solution = row["solution"]
    if isinstance(solution, bool) or not isinstance(solution, int) or not 1 <= solution <= len(options):
        raise BenchmarkSchemaError(f"{where}: solution: {solution!r} out of range (allowed: 1..{len(options)}, 1-indexed)")


def _check_qa(where: str, row: dict) -> None:
    _text(where, row, "context")
    _text(where, row, "question")
    if "answers" not in row:
        raise BenchmarkSchemaError(f"{where}: answers: missing (use [] for an unanswerable question)")
    answers = row["answers"]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise BenchmarkSchemaError(f"{where}: answers: expected a list of strings, got {answers!r}")


def load_mcq(source: str | Path, split: str = "test") -> list[dict]:
    """MCQ items (KMMLU-Pro / KMMLU-Redux schema) from a local file or a Hugging Face dataset id."""
    return _load(source, split, _check_mcq)


def load_qa(source: str | Path, split: str = "test") -> list[dict]:
    """QA items (Ko-LongRAG schema) from a local file or a Hugging Face dataset id."""
    return _load(source, split, _check_qa)
