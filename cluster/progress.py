"""Progress records that outlive the worker: jobs and their tasks report to the store's state area.

A job record (`jobs/<job_id>.json`) says a job started, where, and how it ended. Each task of the
job (the driver's main loop, one Ray actor, ...) keeps a progress record
(`progress/<job_id>/<task>.json`): item n of N, rate, ETA, phase, last heartbeat, node, GPU ids and
GPU memory. `yard status` (cluster/status.py) reads them back and marks a job STALLED when its
heartbeat is older than its limit.

Heartbeats come only from the work itself (`phase`, `advance`, `heartbeat` calls), never from a
timer thread: a thread would keep beating while the main thread hangs in a model load, and the
hang would look like progress.

    >>> job_id = start_job(store, "chat", stall_after_s=300)               # doctest: +SKIP
    >>> with ProgressReporter(store, job_id, task="worker-0", total=len(models)) as rep:  # doctest: +SKIP
    ...     for m in models:
    ...         rep.phase("loading", item=m, stall_after_s=1800)   # a big load may take long
    ...         model = load(m)
    ...         rep.phase("generating", item=m)
    ...         generate(model)
    ...         rep.advance(item=m)
    >>> end_job(store, job_id, "succeeded")                                 # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable

from cluster.gpus import gpu_facts
from cluster.storage import ArtifactStore, StoreError, check_part, open_store

log = logging.getLogger(__name__)

END_STATUSES = ("succeeded", "failed", "stopped")
DEFAULT_STALL_AFTER_S = 600.0
RATE_WINDOW_S = 60.0  # the rate is measured over about the last minute of the current phase
LOG_INTERVAL_S = 10.0  # console progress lines at most this often
# Keys of a progress record; `heartbeat(**extra)` may not overwrite them.
RECORD_KEYS = frozenset({
    "job_id", "task", "status", "phase", "item", "done", "total", "rate_per_s", "eta_s", "started_at",
    "heartbeat_at", "stall_after_s", "node", "pid", "gpu_ids", "gpu_mem_gib", "message", "updated_at",
})


def job_key(job_id: str) -> str:
    return f"jobs/{job_id}.json"


def job_end_key(job_id: str) -> str:
    """The job's final state, written once by `end_job` and never by a heartbeat: a heartbeat that
    read the record before the job ended cannot write "running" back over it."""
    return f"ended/{job_id}.json"


END_FIELDS = ("status", "ended_at", "message", "manifest_key")


def progress_key(job_id: str, task: str) -> str:
    return f"progress/{job_id}/{task}.json"


def read_task(store: ArtifactStore, job_id: str, task: str) -> dict | None:
    """A task's progress record, or None (not written yet, unreadable)."""
    try:
        record = store.get_state(progress_key(job_id, task))
    except (StoreError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def stalled(record: dict | None, now: float | None = None) -> tuple[float, float] | None:
    """(seconds since the heartbeat, the limit) when a running task's heartbeat is older than its
    `stall_after_s` (what `yard status` shows as STALLED), else None."""
    if not record or record.get("status", "running") != "running":
        return None
    beat, limit = record.get("heartbeat_at"), record.get("stall_after_s")
    if beat is None or limit is None:
        return None
    age = (time.time() if now is None else now) - float(beat)
    return (age, float(limit)) if age > float(limit) else None


def mark_task(store: ArtifactStore, job_id: str, task: str, status: str, message: str,
              as_task: str | None = None) -> None:
    """End a task's record from outside it (the job killed a stalled host): `status` and
    `message`, its heartbeat left as it was, so `yard status` shows when it last beat. `as_task`:
    write the ended record under that name instead (a rerun will reuse `task`'s own record)."""
    if status not in END_STATUSES:
        raise ValueError(f"task status {status!r} (allowed: {', '.join(END_STATUSES)})")
    record = read_task(store, job_id, task) or {"job_id": job_id, "task": task}
    record.update(status=status, message=message, updated_at=time.time())
    if as_task is not None:
        record["task"] = task = as_task
    try:
        store.put_state(progress_key(job_id, task), record)
    except Exception as exc:  # the kill stands; the record is the report of it
        log.warning("progress %s/%s: could not mark %s: %s", job_id, task, status, one_line(exc))


def new_job_id(job_name: str, now: float | None = None) -> str:
    """`<job_name>-YYYYMMDD-HHMMSS-<6 hex>` (UTC, as artifact run names)."""
    check_part(job_name, "job name")
    stamp = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
    return f"{job_name}-{stamp:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, for a status column."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --- job records ---------------------------------------------------------------------------------
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


def _read_job(store: ArtifactStore, job_id: str) -> dict | None:
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
    record = _read_job(store, job_id) or {
        "job_id": job_id, "job_name": job_id, "started_at": now, "stall_after_s": DEFAULT_STALL_AFTER_S,
        "config_path": None, "node": socket.gethostname(), "pid": os.getpid(),
    }
    record.update(status=status, heartbeat_at=now, ended_at=now, message=message, manifest_key=manifest_key)
    store.put_state(job_end_key(job_id), {k: record[k] for k in END_FIELDS})  # first: it is what counts
    store.put_state(job_key(job_id), record)


def job_heartbeat(store: ArtifactStore, job_id: str, now: float | None = None) -> None:
    """Refresh a running job's heartbeat_at (read-modify-write; an ended job is left alone)."""
    record = _read_job(store, job_id)
    if record is None or record.get("status") != "running":
        return
    record["heartbeat_at"] = time.time() if now is None else now
    store.put_state(job_key(job_id), record)


# --- formatting ----------------------------------------------------------------------------------
def format_duration(seconds: float | None) -> str:
    """1.5s, 16s, 4m05s, 3h20m, 2d03h."""
    if seconds is None:
        return "-"
    if seconds < 9.95:
        return f"{max(seconds, 0.0):.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_rate(rate_per_s: float | None) -> str:
    """2.3 items/s, or 125 s/item when slower than one item a second."""
    if not rate_per_s:
        return "-"
    return f"{rate_per_s:.1f} items/s" if rate_per_s >= 1 else f"{1 / rate_per_s:.0f} s/item"


# --- the reporter --------------------------------------------------------------------------------
class NullReporter:
    """What work reports to when it runs outside a job (a test, a bench): nothing is written."""

    def phase(self, name: str, item: str | None = None, stall_after_s: float | None = None) -> None:
        pass

    def advance(self, n: int = 1, item: str | None = None) -> None:
        pass

    def heartbeat(self, **extra: Any) -> None:
        pass

    def finish(self, status: str = "succeeded", message: str = "") -> None:
        pass


class ProgressReporter:
    """Reports one task's progress to `progress/<job_id>/<task>.json` and, throttled, the job's
    heartbeat. Safe to create inside a Ray actor or task, and to pickle: only the store's URI
    travels, the store is reopened on first use."""

    def __init__(
        self,
        store: ArtifactStore,
        job_id: str,
        task: str = "main",
        total: int | None = None,
        *,
        stall_after_s: float | None = None,
        min_interval_s: float = 1.0,
        console: bool = True,
        clock: Callable[[], float] = time.time,
    ):
        check_part(job_id, "job id")
        check_part(task, "task name")
        if console and not logging.getLogger().handlers:
            from cluster.joblog import make_logging_unbuffered

            make_logging_unbuffered()  # a Ray worker has no log handler: its INFO lines would be lost
        self._store: ArtifactStore | None = store
        self._store_uri = store.uri
        self._endpoint_url = getattr(store, "endpoint_url", None)
        self.job_id, self.task, self.total = job_id, task, total
        self.min_interval_s, self.console, self.clock = min_interval_s, console, clock
        self.job_interval_s = max(min_interval_s, 5.0)
        if stall_after_s is None:
            job = _read_job(store, job_id) or {}
            stall_after_s = float(job.get("stall_after_s") or DEFAULT_STALL_AFTER_S)
        self.stall_after_s = float(stall_after_s)
        self.phase_stall_after_s: float | None = None
        self.node, self.pid = socket.gethostname(), os.getpid()
        now = clock()
        self.started_at = now
        self.status, self.phase_name, self.item, self.done = "running", None, None, 0
        self.message, self.extra = "", {}
        self._window: deque[tuple[float, int]] = deque([(now, 0)])
        self._last_write = self._last_job_beat = self._last_log = float("-inf")
        self._write(now, force=True)
        self._last_log = now

    # --- pickling: the store is reopened where the reporter lands (another process or node)
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_store"] = None
        return state

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            self._store = open_store(self._store_uri, self._endpoint_url)
        return self._store

    # --- what the work calls
    def phase(self, name: str, item: str | None = None, stall_after_s: float | None = None) -> None:
        """Enter a phase (loading, generating, ...); always written. `stall_after_s` holds for this
        phase only (a large model load may take longer than a step)."""
        now = self.clock()
        self.phase_name, self.item, self.phase_stall_after_s = name, item, stall_after_s
        self._window = deque([(now, self.done)])  # the rate of a phase starts with it
        self._write(now, force=True)
        self._log(now, f"{self.phase_name}{f' {item}' if item else ''}")

    def advance(self, n: int = 1, item: str | None = None) -> None:
        """`n` more items done. Written at most every min_interval_s, and always for the last item."""
        now = self.clock()
        self.done += n
        if item is not None:
            self.item = item
        # samples about a second apart at most, so item-per-token callers keep a small window
        if len(self._window) > 1 and now - self._window[-2][0] < 1.0:
            self._window[-1] = (now, self.done)
        else:
            self._window.append((now, self.done))
        while len(self._window) > 2 and self._window[1][0] <= now - RATE_WINDOW_S:
            self._window.popleft()
        last = self.total is not None and self.done >= self.total
        self._write(now, force=last)
        if last or now - self._last_log >= LOG_INTERVAL_S:
            self._log(now, self._progress_text(now))

    def heartbeat(self, **extra: Any) -> None:
        """Alive, for work without item counts (a training step callback); `extra` (step=, loss=)
        is stored in the record. Throttled as `advance`."""
        clash = RECORD_KEYS.intersection(extra)
        if clash:
            raise ValueError(f"heartbeat: {', '.join(sorted(clash))} are record fields, pick other names")
        self.extra.update(extra)
        now = self.clock()
        self._write(now)
        if now - self._last_log >= LOG_INTERVAL_S:
            self._log(now, " ".join([self.phase_name or "alive"] + [f"{k}={v}" for k, v in self.extra.items()]))

    def set_total(self, n: int | None) -> None:
        self.total = n
        self._write(self.clock())

    def finish(self, status: str = "succeeded", message: str = "") -> None:
        """Final record. Later calls (e.g. `__exit__` after an explicit finish) change nothing."""
        if status not in END_STATUSES:
            raise ValueError(f"task status {status!r} (allowed: {', '.join(END_STATUSES)})")
        if self.status != "running":
            return
        now = self.clock()
        self.status, self.message = status, message
        if status == "succeeded":  # a failure keeps the phase it failed in; success has none left
            self.phase_name, self.item = "done", None
        self._write(now, force=True)
        self._log(now, f"{status} {self._count()} in {format_duration(now - self.started_at)}"
                  + (f": {message}" if message else ""))

    def __enter__(self) -> "ProgressReporter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.finish("succeeded")
        elif isinstance(exc, KeyboardInterrupt):
            self.finish("stopped", "interrupted")
        else:
            self.finish("failed", one_line(exc))
        return False

    # --- numbers
    @property
    def rate_per_s(self) -> float | None:
        (t0, d0), (t1, d1) = self._window[0], self._window[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 and d1 > d0 else None

    def eta_s(self) -> float | None:
        if self.total is None:
            return None
        left = max(self.total - self.done, 0)
        rate = self.rate_per_s
        return 0.0 if left == 0 else (left / rate if rate else None)

    def record(self, now: float) -> dict:
        gpu_ids, gpu_mem_gib = gpu_facts()
        rate, eta = self.rate_per_s, self.eta_s()
        return {
            **self.extra,
            "job_id": self.job_id,
            "task": self.task,
            "status": self.status,
            "phase": self.phase_name,
            "item": self.item,
            "done": self.done,
            "total": self.total,
            "rate_per_s": round(rate, 6) if rate is not None else None,
            "eta_s": round(eta, 1) if eta is not None else None,
            "started_at": self.started_at,
            "heartbeat_at": now,
            "stall_after_s": self.phase_stall_after_s or self.stall_after_s,
            "node": self.node,
            "pid": self.pid,
            "gpu_ids": gpu_ids,
            "gpu_mem_gib": gpu_mem_gib,
            "message": self.message,
            "updated_at": now,
        }

    # --- internals
    def _write(self, now: float, force: bool = False) -> None:
        if not force and now - self._last_write < self.min_interval_s:
            return
        # progress reporting must never kill the work it reports on: a failed write is logged
        # and the next one tries again (a long gap shows up as STALLED, which is the truth)
        try:
            self.store.put_state(progress_key(self.job_id, self.task), self.record(now))
            self._last_write = now
            if now - self._last_job_beat >= self.job_interval_s or self.status != "running":
                job_heartbeat(self.store, self.job_id, now)
                self._last_job_beat = now
        except Exception as exc:
            log.warning("progress %s/%s: could not write the record: %s", self.job_id, self.task, one_line(exc))

    def _count(self) -> str:
        return f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"

    def _progress_text(self, now: float) -> str:
        text = f"{self.phase_name or 'progress'}{f' {self.item}' if self.item else ''} {self._count()} ({format_rate(self.rate_per_s)}"
        eta = self.eta_s()
        return text + (f", ETA {format_duration(eta)})" if eta is not None else ")")

    def _log(self, now: float, text: str) -> None:
        self._last_log = now
        if self.console:
            who = self.node if self.task == "main" else f"{self.node} {self.task}"
            log.info("%s %s", who, text)
