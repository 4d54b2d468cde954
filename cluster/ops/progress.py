"""Progress records that outlive the worker: a job's tasks report to the store's state area.

The job's own record (`jobs/<job_id>.json`: started, where, how it ended) is `cluster.ops.job_record`'s. Each task of the
job (the driver's main loop, one Ray actor, ...) keeps a progress record
(`progress/<job_id>/<task>.json`): item n of N, rate, ETA, phase, last heartbeat, node, GPU ids and
GPU memory. `yard status` (cluster/ops/status.py) reads them back and marks a job STALLED when its
heartbeat is older than its limit.

Heartbeats come only from the work itself (`phase`, `advance`, `heartbeat` calls), never from a
timer thread: a thread would keep beating while the main thread hangs in a model load, and the
hang would look like progress.

    >>> job_id = cluster.ops.job_record.start_job(store, "chat", stall_after_s=300)  # doctest: +SKIP
    >>> with ProgressReporter(store, job_id, task="worker-0", total=len(models)) as rep:  # doctest: +SKIP
    ...     for m in models:
    ...         rep.phase("loading", item=m, stall_after_s=1800)   # a big load may take long
    ...         model = load(m)
    ...         rep.phase("generating", item=m)
    ...         generate(model)
    ...         rep.advance(item=m)
    >>> cluster.ops.job_record.end_job(store, job_id, "succeeded")                    # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from typing import Any, Callable

from cluster.capacity.gpus import gpu_facts
from cluster.console import format_duration, format_rate
from cluster.ops.job_record import DEFAULT_STALL_AFTER_S, END_STATUSES, job_heartbeat, read_job
from cluster.store.storage import ArtifactStore, StoreError, check_part, open_store

log = logging.getLogger(__name__)

RATE_WINDOW_S = 60.0  # the rate is measured over about the last minute of the current phase
LOG_INTERVAL_S = 10.0  # console progress lines at most this often
# Keys of a progress record; `heartbeat(**extra)` may not overwrite them.
RECORD_KEYS = frozenset({
    "job_id", "task", "status", "phase", "item", "done", "total", "rate_per_s", "eta_s", "started_at",
    "heartbeat_at", "stall_after_s", "node", "pid", "gpu_ids", "gpu_mem_gib", "message", "updated_at",
})


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


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, for a status column."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --- the reporter --------------------------------------------------------------------------------
class NullReporter:
    """What work reports to when it runs outside a job (a test, a bench): nothing is written."""

    def phase(self, name: str, item: str | None = None, stall_after_s: float | None = None) -> None:
        pass

    def advance(self, n: int = 1, item: str | None = None) -> None:
        pass

    def update(self, done: int, total: int | None = None, item: str | None = None) -> None:
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
            job = read_job(store, job_id) or {}
            stall_after_s = float(job.get("stall_after_s") or DEFAULT_STALL_AFTER_S)
        self.stall_after_s = float(stall_after_s)
        self.phase_stall_after_s: float | None = None
        self.node, self.pid = socket.gethostname(), os.getpid()
        now = clock()
        self.started_at = now
        self.status, self.phase_name, self.item, self.done = "running", None, None, 0
        self.message, self.extra = "", {}
        # (GPU ids, GiB on each) for the record; None: this process's own (`gpu_facts`). A task
        # whose work runs in a child process (an experiment's script) measures the child instead.
        self.gpu_probe: Callable[[], tuple[list, list]] | None = None
        self._window: deque[tuple[float, int]] = deque([(now, 0)])
        self._last_write = self._last_job_beat = self._last_log = float("-inf")
        self._last_beat = now
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

    def update(self, done: int, total: int | None = None, item: str | None = None) -> None:
        """Absolute progress, as a script prints it (`6/128`): `advance` by the difference. A count
        that goes back (the script's next loop) starts the rate over."""
        if total is not None:
            self.total = total
        if done < self.done:
            self.done, self._window = 0, deque([(self.clock(), 0)])
        self.advance(done - self.done, item=item)

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
        gpu_ids, gpu_mem_gib = (self.gpu_probe or gpu_facts)()
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
            "heartbeat_at": self._last_beat,
            "stall_after_s": self.phase_stall_after_s or self.stall_after_s,
            "node": self.node,
            "pid": self.pid,
            "gpu_ids": gpu_ids,
            "gpu_mem_gib": gpu_mem_gib,
            "message": self.message,
            "updated_at": now,
        }

    def refresh(self) -> None:
        """Rewrite the record's facts (GPU memory: `gpu_probe`) without a heartbeat, throttled as a
        write: what the work holds stays current while it is silent, and a hung task still shows
        its last heartbeat (a watcher's loop calls this, never the work's own progress)."""
        now = self.clock()
        if self.status != "running" or now - self._last_write < max(self.min_interval_s, 5.0):
            return
        try:
            self.store.put_state(progress_key(self.job_id, self.task), self.record(now))
            self._last_write = now
        except Exception as exc:
            log.warning("progress %s/%s: could not refresh the record: %s", self.job_id, self.task, one_line(exc))

    # --- internals
    def _write(self, now: float, force: bool = False) -> None:
        if not force and now - self._last_write < self.min_interval_s:
            return
        self._last_beat = now  # every write from the work itself is a heartbeat
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
