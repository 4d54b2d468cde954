"""`yard status`: running and recent jobs, read back from the store's state area.

Job records (`jobs/<job_id>.json`) and task progress records (`progress/<job_id>/<task>.json`) are
written by cluster/ops/progress.py from the work itself, so a record outlives a crashed worker and a
hung one stops beating. A running task is STALLED once its heartbeat is older than its record's
`stall_after_s` (the per-phase limit when one is set); a running job is STALLED when one of its
running tasks is, or, with no running task, when its latest heartbeat is older than its limit.

    yard status                          # the table
    yard status --markdown status.md     # the same facts as a markdown report
    yard status --store s3://bucket/yard --all
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cluster.console import format_duration, format_rate
from cluster.ops.job_record import END_FIELDS
from cluster.store.storage import ArtifactStore, StoreError, open_store

log = logging.getLogger(__name__)

STATUSES = ("RUNNING", "STALLED", "SUCCEEDED", "FAILED", "STOPPED")
RECENT_S = 7 * 86400.0
_STYLE = {"RUNNING": "green", "STALLED": "bold red", "SUCCEEDED": "blue", "FAILED": "red", "STOPPED": "yellow"}
_TASK_FIELDS = frozenset({
    "job_id", "task", "status", "phase", "item", "done", "total", "rate_per_s", "eta_s", "started_at",
    "heartbeat_at", "stall_after_s", "node", "pid", "gpu_ids", "gpu_mem_gib", "message", "updated_at",
})


@dataclass
class TaskStatus:
    task: str
    status: str  # one of STATUSES
    phase: str | None = None
    item: str | None = None
    done: int = 0
    total: int | None = None
    rate_per_s: float | None = None
    eta_s: float | None = None  # from now, for a RUNNING task
    heartbeat_age_s: float | None = None
    stall_after_s: float | None = None
    node: str | None = None
    pid: int | None = None
    gpu_ids: list = field(default_factory=list)
    gpu_mem_gib: list = field(default_factory=list)
    message: str = ""
    extra: dict = field(default_factory=dict)  # heartbeat(**extra) keys, e.g. step, loss

    @property
    def progress(self) -> str:
        if self.total is None:
            return str(self.done) if self.done else "-"
        pct = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
        return f"{self.done}/{self.total}{pct}"


@dataclass
class JobStatus:
    job_id: str
    job_name: str
    status: str  # one of STATUSES
    started_at: float | None = None
    ended_at: float | None = None
    heartbeat_age_s: float | None = None  # the latest of the job's and its tasks' heartbeats
    stall_after_s: float | None = None
    node: str | None = None
    pid: int | None = None
    config_path: str | None = None
    message: str = ""
    manifest_key: str | None = None
    tasks: list[TaskStatus] = field(default_factory=list)


def _read(store: ArtifactStore, key: str) -> dict | None:
    try:
        record = store.get_state(key)
    except (StoreError, ValueError) as exc:  # deleted since the listing, or half-written by an old writer
        log.warning("skipping state record %s: %s", key, exc)
        return None
    return record if isinstance(record, dict) else None


def _stale(heartbeat_at: float | None, limit: float | None, now: float) -> bool:
    return heartbeat_at is None or (limit is not None and now - heartbeat_at > limit)


def _task_status(rec: dict, job_rec: dict | None, now: float) -> TaskStatus:
    raw = str(rec.get("status") or "running")
    hb = rec.get("heartbeat_at")
    limit = rec.get("stall_after_s")
    if raw == "running" and job_rec is not None and job_rec.get("status", "running") != "running":
        status = str(job_rec["status"]).upper()  # the job ended without this task finishing
    elif raw == "running":
        status = "STALLED" if _stale(hb, limit, now) else "RUNNING"
    else:
        status = raw.upper()
    eta = rec.get("eta_s")
    if status != "RUNNING":
        eta = None
    elif eta is not None and hb is not None:
        eta = max(eta - (now - hb), 0.0)
    return TaskStatus(
        task=str(rec.get("task", "?")),
        status=status,
        phase=rec.get("phase"),
        item=rec.get("item"),
        done=int(rec.get("done") or 0),
        total=rec.get("total"),
        rate_per_s=rec.get("rate_per_s"),
        eta_s=eta,
        heartbeat_age_s=(now - hb) if hb is not None else None,
        stall_after_s=limit,
        node=rec.get("node"),
        pid=rec.get("pid"),
        gpu_ids=list(rec.get("gpu_ids") or []),
        gpu_mem_gib=list(rec.get("gpu_mem_gib") or []),
        message=str(rec.get("message") or ""),
        extra={k: v for k, v in rec.items() if k not in _TASK_FIELDS},
    )


def _natural(name: str) -> list:
    """Sort key: worker-2 before worker-10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _job_status(job_id: str, rec: dict | None, task_recs: list[dict], now: float) -> tuple[JobStatus, float]:
    """The job's status and its last activity time (for the `recent` filter)."""
    tasks = sorted((_task_status(t, rec, now) for t in task_recs), key=lambda t: _natural(t.task))
    beats = [t["heartbeat_at"] for t in task_recs if t.get("heartbeat_at") is not None]
    if rec is None:  # tasks reported under a job id that start_job never wrote
        raw = [str(t.get("status") or "running") for t in task_recs]
        job_raw = next((s for s in ("running", "failed", "stopped") if s in raw), "succeeded")
        rec = {"job_name": job_id, "status": job_raw, "started_at": min((t.get("started_at") or now for t in task_recs), default=None)}
    if rec.get("heartbeat_at") is not None:
        beats.append(rec["heartbeat_at"])
    last_beat = max(beats) if beats else rec.get("started_at")
    if rec.get("status", "running") == "running":
        running = [t for t in tasks if t.status in ("RUNNING", "STALLED")]
        if running:  # tasks speak for the job, with their own (per-phase) limits
            status = "STALLED" if any(t.status == "STALLED" for t in running) else "RUNNING"
        else:
            status = "STALLED" if _stale(last_beat, rec.get("stall_after_s"), now) else "RUNNING"
    else:
        status = str(rec["status"]).upper()
    job = JobStatus(
        job_id=job_id,
        job_name=str(rec.get("job_name") or job_id),
        status=status,
        started_at=rec.get("started_at"),
        ended_at=rec.get("ended_at"),
        heartbeat_age_s=(now - last_beat) if last_beat is not None else None,
        stall_after_s=rec.get("stall_after_s"),
        node=rec.get("node"),
        pid=rec.get("pid"),
        config_path=rec.get("config_path"),
        message=str(rec.get("message") or ""),
        manifest_key=rec.get("manifest_key"),
        tasks=tasks,
    )
    activity = [x for x in (rec.get("started_at"), rec.get("ended_at"), last_beat) if x is not None]
    return job, max(activity) if activity else now


def collect(store: ArtifactStore, now: float | None = None, recent_s: float = RECENT_S) -> list[JobStatus]:
    """Jobs active within the last `recent_s` seconds (math.inf: all): stalled first, then
    running, then the rest; newest first within each."""
    now = time.time() if now is None else now
    job_recs: dict[str, dict] = {}
    for key in store.list_state("jobs/"):
        rec = _read(store, key) if key.endswith(".json") else None
        if rec is not None:
            job_recs[str(rec.get("job_id") or key[len("jobs/"):-len(".json")])] = rec
    for key in store.list_state("ended/"):  # a job's final state wins over a late heartbeat's write
        ended = _read(store, key) if key.endswith(".json") else None
        job_id = key[len("ended/"):-len(".json")]
        if ended is not None:
            job_recs[job_id] = {**job_recs.get(job_id, {"job_id": job_id}),
                                **{k: ended.get(k) for k in END_FIELDS}}
    task_recs: dict[str, list[dict]] = defaultdict(list)
    for key in store.list_state("progress/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2].endswith(".json"):
            rec = _read(store, key)
            if rec is not None:
                task_recs[parts[1]].append(rec)
    out = []
    for job_id in set(job_recs) | set(task_recs):
        job, last_activity = _job_status(job_id, job_recs.get(job_id), task_recs.get(job_id, []), now)
        if now - last_activity <= recent_s:
            out.append(job)
    rank = {"STALLED": 0, "RUNNING": 1}
    return sorted(out, key=lambda j: (rank.get(j.status, 2), -(j.started_at or 0.0), j.job_id))


def summary_line(statuses: list[JobStatus]) -> str:
    """'2 running, 1 stalled, 3 succeeded' (jobs, zero counts left out)."""
    counts = Counter(j.status for j in statuses)
    order = list(STATUSES) + sorted(set(counts) - set(STATUSES))
    return ", ".join(f"{counts[s]} {s.lower()}" for s in order if counts[s]) or "no jobs"


# --- rows: the same cells for the table and the markdown -------------------------------------------
COLUMNS = ("job", "task", "status", "phase", "item", "progress", "rate", "ETA", "heartbeat", "node", "GPU", "GPU mem", "note")


def _gpu_cells(gpu_ids: list, gpu_mem_gib: list) -> tuple[str, str]:
    ids = ",".join(str(g) for g in gpu_ids) or "-"
    mem = "/".join(f"{m:.1f}" for m in gpu_mem_gib) + " GiB" if gpu_mem_gib else "-"
    return ids, mem


def _age(seconds: float | None) -> str:
    return f"{format_duration(seconds)} ago" if seconds is not None else "-"


def _note(status: str, age: float | None, limit: float | None, message: str, extra: dict | None = None) -> str:
    if status == "STALLED" and age is not None:
        note = f"no heartbeat for {format_duration(age)} (limit {format_duration(limit)})"
        return f"{note}; {message}" if message else note
    if message:
        return message
    return " ".join(f"{k}={v}" for k, v in (extra or {}).items())


def rows(job: JobStatus) -> list[list[str]]:
    """One row per task; plus a '(job)' row when no task row shows the job's own status (no
    tasks yet, a driver stalled between tasks, a job that failed after its tasks succeeded)."""
    out = []
    for t in job.tasks:
        ids, mem = _gpu_cells(t.gpu_ids, t.gpu_mem_gib)
        out.append([
            job.job_id, t.task, t.status, t.phase or "-", t.item or "-", t.progress, format_rate(t.rate_per_s),
            format_duration(t.eta_s), _age(t.heartbeat_age_s), t.node or "-", ids, mem,
            _note(t.status, t.heartbeat_age_s, t.stall_after_s, t.message, t.extra),
        ])
    if all(t.status != job.status for t in job.tasks):
        out.append([
            job.job_id, "(job)", job.status, "-", "-", "-", "-", "-", _age(job.heartbeat_age_s), job.node or "-",
            "-", "-", _note(job.status, job.heartbeat_age_s, job.stall_after_s, job.message),
        ])
    return out


def render_table(statuses: list[JobStatus]):
    """A rich Table, rows as `rows()`; the job id is written on its first row only."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, caption=summary_line(statuses), caption_justify="left")
    for col in COLUMNS:
        table.add_column(col, overflow="fold", no_wrap=col in ("status", "progress", "heartbeat"))
    for job in statuses:
        for j, row in enumerate(rows(job)):
            # Text, not markup: an item or message holding "[...]" is shown as written
            cells = [Text(c) for c in (row[0] if j == 0 else "", *row[1:])]
            cells[2].stylize(_STYLE.get(row[2], ""))
            table.add_row(*cells)
    return table


def _md(cell: str) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def render_markdown(statuses: list[JobStatus], title: str = "yard status") -> str:
    """A markdown report: a summary line, then per job its facts and a table of its tasks."""
    lines = [f"# {title}", "", f"_generated {_when(time.time())}_", "", f"**{summary_line(statuses)}**", ""]
    for job in statuses:
        lines += [f"## {job.job_id}: {job.status}", ""]
        facts = [f"job `{job.job_name}`", f"started {_when(job.started_at)}"]
        if job.ended_at:
            facts.append(f"ended {_when(job.ended_at)} ({format_duration(job.ended_at - (job.started_at or job.ended_at))})")
        facts += [f"heartbeat {_age(job.heartbeat_age_s)}", f"stall limit {format_duration(job.stall_after_s)}"]
        if job.node:
            facts.append(f"node {job.node} (pid {job.pid})")
        if job.config_path:
            facts.append(f"config `{job.config_path}`")
        if job.manifest_key:
            facts.append(f"manifest `{job.manifest_key}`")
        lines += ["; ".join(facts), ""]
        if job.message:
            lines += [f"> {_md(job.message)}", ""]
        lines += ["| " + " | ".join(COLUMNS[1:]) + " |", "|" + "---|" * (len(COLUMNS) - 1)]
        lines += ["| " + " | ".join(_md(c) for c in row[1:]) + " |" for row in rows(job)]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`yard status [--store URI] [--markdown PATH] [--all]`."""
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="yard status", description="running and recent jobs; STALLED when a heartbeat is late")
    parser.add_argument("--store", default=os.environ.get("YARD_STORE", ".yard"), help="store URI (default: $YARD_STORE or .yard)")
    parser.add_argument("--endpoint-url", help="S3 endpoint (default: $YARD_S3_ENDPOINT_URL, else boto3's $AWS_ENDPOINT_URL)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the report as markdown to PATH")
    parser.add_argument("--all", action="store_true", help=f"every job, not only those active in the last {format_duration(RECENT_S)}")
    args = parser.parse_args(argv)

    store = open_store(args.store, args.endpoint_url)
    statuses = collect(store, recent_s=math.inf if args.all else RECENT_S)
    # a wide fixed width when piped, so job ids stay on one line in logs and captures
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 220)
    if statuses:
        console.print(render_table(statuses))
    elif args.all or not (store.list_state("jobs/") or store.list_state("progress/")):
        print(f"no jobs recorded in {store.uri} yet")
    else:
        print(f"no jobs in {store.uri} active in the last {format_duration(RECENT_S)} (--all for older ones)")
    if args.markdown:
        path = Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_markdown(statuses, title=f"yard status: {store.uri}"))
        print(f"wrote {path}")
    return 0
