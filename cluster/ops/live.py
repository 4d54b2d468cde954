"""A running job's progress on the console, fed by the progress records `yard status` reads.

On a terminal: one live view, redrawn in place (rich): each task of the job with its phase, item,
n of N, rate, ETA, heartbeat and a STALLED mark. Without one (CI, `ray job submit`, a pipe): a
plain line per running task every `plain_interval_s` (default 30 s), only when something moved.
Started and stopped by `cluster.ops.jobs.run_job`; `YARD_LIVE=0` turns it off.

    with LiveView(store, job_id):
        ...  # the job's work
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time

from cluster.ops.status import JobStatus, collect, render_table, rows

log = logging.getLogger(__name__)


def enabled() -> bool:
    return os.environ.get("YARD_LIVE", "1") != "0"


def plain_lines(job: JobStatus, now: float | None = None) -> list[str]:
    """One line per task that is running or stalled: `HH:MM:SS job task STATUS phase item n/N rate ETA`."""
    stamp = time.strftime("%H:%M:%S", time.localtime(time.time() if now is None else now))
    out = []
    for row in rows(job):
        _, task, status, phase, item, progress, rate, eta, *_, note = row
        if status not in ("RUNNING", "STALLED") or (task == "(job)" and status != "STALLED"):
            continue  # the job's own row is news only when it stalled between tasks
        parts = [stamp, job.job_name, task, status, phase, item, progress]
        if rate != "-":
            parts.append(rate)
        if eta != "-":
            parts.append(f"ETA {eta}")
        if status == "STALLED":
            parts.append(note)
        out.append(" ".join(p for p in parts if p and p != "-"))
    return out


class LiveView:
    def __init__(self, store, job_id: str, *, tty: bool | None = None, interval_s: float = 1.0,
                 plain_interval_s: float | None = None, stream=None, clock=time.time):
        self.store, self.job_id, self.clock = store, job_id, clock
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = interval_s
        self.plain_interval_s = float(os.environ.get("YARD_PROGRESS_EVERY_S", "30")) if plain_interval_s is None \
            else plain_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = None
        self._last_plain: tuple = ()

    def _job(self) -> JobStatus | None:
        try:
            return next((j for j in collect(self.store, now=self.clock()) if j.job_id == self.job_id), None)
        except Exception as exc:  # noqa: BLE001 - a view never stops the job
            log.debug("live view: cannot read progress: %s", exc)
            return None

    def _tick_tty(self) -> None:
        job = self._job()
        if job is not None:
            self._live.update(render_table([job]))

    def _tick_plain(self) -> None:
        job = self._job()
        if job is None:
            return
        lines = plain_lines(job, now=self.clock())
        # the same tasks at the same counts: nothing moved, nothing printed (a STALLED mark is news)
        state = tuple(line.split(" ", 1)[1] for line in lines)
        if lines and state != self._last_plain:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        self._last_plain = state

    def _run(self) -> None:
        every = self.interval_s if self.tty else self.plain_interval_s
        while not self._stop.wait(every):
            try:
                self._tick_tty() if self.tty else self._tick_plain()
            except Exception as exc:  # noqa: BLE001
                log.debug("live view: %s", exc)

    def start(self) -> LiveView:
        if not enabled():
            return self
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream), refresh_per_second=2, transient=True)
            self._live.start()
        self._thread = threading.Thread(target=self._run, name=f"yard-live-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._live is not None:
            self._live.stop()  # transient: the tables and report paths the job prints follow

    def __enter__(self) -> LiveView:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
