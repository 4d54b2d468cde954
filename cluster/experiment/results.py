"""The experiment's results table: a row per condition (its axes, status, seconds, the scalar fields
of its result), written as CSV, markdown and JSON lines, with a report listing every failure."""
from __future__ import annotations

import csv
import io
import json
from typing import Any

from cluster.store.storage import RunWriter, new_run_name

SCALARS = (str, int, float, bool)


def row(condition_id: str, condition: dict, status: str, *, attempts: int, seconds: float, result: dict | None,
        run: str | None, reason: str = "", reused_from: str | None = None, log_tail: list[str] | None = None) -> dict:
    out: dict[str, Any] = {"condition_id": condition_id, **condition, "status": status, "attempts": attempts,
                           "seconds": round(seconds, 2), "reused": bool(reused_from)}
    for k, v in (result or {}).items():
        if isinstance(v, SCALARS) or v is None:
            out[k if k not in out else f"result.{k}"] = v
    out["run"] = reused_from or run
    out["reason"] = reason
    if log_tail:
        out["_log_tail"] = log_tail
    return out


def columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols and not k.startswith("_")]
    return cols


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _cell(v: Any) -> str:
    if isinstance(v, float):
        v = f"{v:.4g}"
    return str("" if v is None else v).replace("|", "\\|").replace("\n", " ")


def to_markdown(rows: list[dict], skip: tuple[str, ...] = ("run", "reason")) -> str:
    cols = [c for c in columns(rows) if c not in skip]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, default=str) + "\n" for r in rows)


def write_results(store, experiment: str, rows: list[dict], *, job_id: str, header: list[str],
                  cost_line: str = "") -> str:
    """results.csv / results.md / results.jsonl and report.md in experiments/<name>/results/<run>/;
    returns where report.md is."""
    run = RunWriter(store, "experiments", f"{experiment}/results", new_run_name())
    run.put_bytes("results.csv", to_csv(rows).encode())
    table = to_markdown(rows)
    run.put_bytes("results.md", (table + "\n").encode())
    run.put_bytes("results.jsonl", to_jsonl(rows).encode())
    failed = [r for r in rows if r["status"] != "ok"]
    lines = [f"# Experiment {experiment}", "", *header, "", table, ""]
    if failed:
        lines += [f"## Failures ({len(failed)})", ""]
        for r in failed:
            lines += [f"### {r['condition_id']}: {r['status']}", "", f"{r['reason']}", "", f"Run: `{r['run']}`"]
            if r.get("_log_tail"):
                lines += ["", "```", *r["_log_tail"], "```"]
            lines.append("")
    if cost_line:
        lines += [cost_line, ""]
    key = run.put_bytes("report.md", "\n".join(lines).encode())
    run.complete(job_id=job_id)
    return store.locate(key)
