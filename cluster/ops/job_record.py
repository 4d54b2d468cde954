"""The job record `yard status` reads: started, heartbeat, how it ended (`_state/jobs/<job_id>.json`).

One record per job, written by the job (`start_job`, `end_job`) and refreshed by its tasks'
progress reporters (`job_heartbeat`); `yard status` and the live view read it back. It lives apart
from cluster/ops/jobs.py (`run_job`, the manifest) because the readers and writers of records
(cluster/ops/progress.py, cluster/ops/status.py) sit below the job runner, which uses both.

    >>> job_id = start_job(store, "chat", stall_after_s=300)    # doctest: +SKIP
    >>> end_job(store, job_id, "succeeded")                      # doctest: +SKIP
    >>> read_job(store, job_id)["status"]                        # doctest: +SKIP
    'succeeded'
"""
from __future__ import annotations

import os
import secrets
import socket
import time
from datetime import datetime, timezone

from cluster.store.storage import ArtifactStore, StoreError, check_part

END_STATUSES = ("succeeded", "failed", "stopped")  # how a job, or one of its tasks, ends
DEFAULT_STALL_AFTER_S = 600.0


def job_key(job_id: str) -> str:
    return f"jobs/{job_id}.json"


def job_end_key(job_id: str) -> str:
    """The job's final state, written once by `end_job` and never by a heartbeat: a heartbeat that
    read the record before the job ended cannot write "running" back over it."""
    return f"ended/{job_id}.json"


END_FIELDS = ("status", "ended_at", "message", "manifest_key")


def new_job_id(job_name: str, now: float | None = None) -> str:
    """`<job_name>-YYYYMMDD-HHMMSS-<6 hex>` (UTC, as artifact run names)."""
    check_part(job_name, "job name")
    stamp = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
    return f"{job_name}-{stamp:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def start_job(
    store: ArtifactStore,
    job_name: str,
    *,
    config_path: str | None = None,
    stall_after_s: float = DEFAULT_STALL_AFTER_S,
    job_id: str | None = None,
    now: float | None = None,
) -> str:
    """Write a running job record and return its job id."""
    if stall_after_s <= 0:
        raise ValueError(f"stall_after_s must be > 0, got {stall_after_s}")
    now = time.time() if now is None else now
    job_id = check_part(job_id, "job id") if job_id else new_job_id(job_name, now)
    store.put_state(job_key(job_id), {
        "job_id": job_id,
        "job_name": job_name,
        "status": "running",
        "started_at": now,
        "heartbeat_at": now,
        "ended_at": None,
        "stall_after_s": float(stall_after_s),
        "config_path": str(config_path) if config_path is not None else None,
        "node": socket.gethostname(),
        "pid": os.getpid(),
        "message": "",
        "manifest_key": None,
    })
    return job_id


def read_job(store: ArtifactStore, job_id: str) -> dict | None:
    """The job record with its final state (`ended/`) laid over it once the job ended."""
    try:
        record = store.get_state(job_key(job_id))
    except (StoreError, ValueError):  # missing, or unreadable JSON
        record = None
    try:
        ended = store.get_state(job_end_key(job_id))
    except (StoreError, ValueError):
        ended = None
    if isinstance(ended, dict):
        record = {**(record if isinstance(record, dict) else {"job_id": job_id}),
                  **{k: ended.get(k) for k in END_FIELDS}}
    return record


def end_job(
    store: ArtifactStore,
    job_id: str,
    status: str,
    message: str = "",
    manifest_key: str | None = None,
    now: float | None = None,
) -> None:
    """Mark a job succeeded, failed or stopped (a record is created if start_job never wrote one)."""
    if status not in END_STATUSES:
        raise ValueError(f"job status {status!r} (allowed: {', '.join(END_STATUSES)})")
    now = time.time() if now is None else now
    record = read_job(store, job_id) or {
        "job_id": job_id, "job_name": job_id, "started_at": now, "stall_after_s": DEFAULT_STALL_AFTER_S,
        "config_path": None, "node": socket.gethostname(), "pid": os.getpid(),
    }
    record.update(status=status, heartbeat_at=now, ended_at=now, message=message, manifest_key=manifest_key)
    store.put_state(job_end_key(job_id), {k: record[k] for k in END_FIELDS})  # first: it is what counts
    store.put_state(job_key(job_id), record)


def job_heartbeat(store: ArtifactStore, job_id: str, now: float | None = None) -> None:
    """Refresh a running job's heartbeat_at (read-modify-write; an ended job is left alone)."""
    record = read_job(store, job_id)
    if record is None or record.get("status") != "running":
        return
    record["heartbeat_at"] = time.time() if now is None else now
    store.put_state(job_key(job_id), record)
