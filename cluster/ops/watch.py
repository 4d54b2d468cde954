"""Acting on a stalled Ray task: `wait_watched` is `ray.get` that kills a task whose progress
record stopped beating (the record `yard status` shows as STALLED) and says so."""
from __future__ import annotations

import logging
import time

from cluster.ops.progress import mark_task, one_line, read_task, stalled
from cluster.store.storage import ArtifactStore

log = logging.getLogger(__name__)


class TaskStalled(RuntimeError):
    """A task the job killed at its stall limit (`wait_watched`)."""

    def __init__(self, reason: str, task: str, phase: str, heartbeat_age_s: float, limit_s: float):
        super().__init__(reason)
        self.reason, self.task, self.phase = reason, task, phase
        self.heartbeat_age_s, self.limit_s = heartbeat_age_s, limit_s

    def incident(self, retried: bool) -> dict:
        return {"task": self.task, "phase": self.phase, "heartbeat_age_s": round(self.heartbeat_age_s, 1),
                "limit_s": self.limit_s, "retried": retried, "reason": self.reason}


def attempt_stall(store: ArtifactStore, job_id: str, task: str, since: float, stall_after_s: float,
                  now: float) -> tuple[tuple[float, float] | None, str]:
    """((heartbeat age, limit) or None, phase) for the attempt of `task` started at `since`: stalled
    when its record's heartbeat is past its limit, or when it wrote no record of its own within
    `stall_after_s` (a record ended, or older than the attempt, is an earlier attempt's; the
    phase is then "starting"). Store errors propagate: the caller decides (a hiccup is not a hang)."""
    record = read_task(store, job_id, task)
    if record is not None and (record.get("status", "running") != "running"
                               or float(record.get("started_at") or 0) < since - 60):
        record = None
    late = stalled(record, now)
    if record is None and now - since > stall_after_s:
        late = (now - since, float(stall_after_s))
    return late, (record or {}).get("phase") or "starting"


def end_killed(store: ArtifactStore, job_id: str, task: str, reason: str, attempt: int) -> None:
    """End a killed attempt's record as failed, kept as `<task>.killed<attempt>` beside the rerun's."""
    mark_task(store, job_id, task, "failed", reason, as_task=f"{task}.killed{attempt}")
    mark_task(store, job_id, task, "failed", reason)


def wait_watched(ref, store: ArtifactStore, job_id: str, task: str, stall_after_s: float, *,
                 attempt: int = 1, poll_s: float = 2.0):
    """`ray.get(ref)` for a Ray task that reports as `task` (a ProgressReporter), except that a
    task whose heartbeat is older than its limit, or which wrote no record within
    `stall_after_s` of being submitted, is cancelled with force (its worker process is killed,
    whatever state it is in) and TaskStalled is raised. The killed attempt's record is kept as
    `<task>.killed<attempt>` (ended failed) so `yard status` shows it beside a rerun's."""
    import ray

    submitted = time.time()
    while True:
        ready, _ = ray.wait([ref], timeout=poll_s)
        if ready:
            return ray.get(ref)
        try:
            late, phase = attempt_stall(store, job_id, task, submitted, stall_after_s, time.time())
        except Exception as exc:  # noqa: BLE001 - a store hiccup is not a hang
            log.warning("progress %s/%s: cannot read: %s", job_id, task, one_line(exc))
            continue
        if late is None:
            continue
        age, limit = late
        reason = f"{task} stalled: no heartbeat for {age:.0f}s while {phase} (limit {limit:.0f}s); killed"
        log.warning("%s", reason)
        ray.cancel(ref, force=True)
        end_killed(store, job_id, task, reason, attempt)
        raise TaskStalled(reason, task, phase, age, limit)
