"""Hung and overlong sweep trials are acted on: Tune itself waits for ever on a trial whose process
stopped answering. `trial_watchdog` is the Tune callback `tune.sweep.sweep` adds; `killed_reasons` and
`incidents_markdown` put what it did into the rows and the leaderboard."""
from __future__ import annotations

import logging
import time

from cluster.store.storage import ArtifactStore, open_store
from tune.config import SweepConfig

log = logging.getLogger(__name__)


def trial_watchdog(store: ArtifactStore, job_id: str, cfg: SweepConfig, incidents: list[dict], *, poll_s: float = 2.0):
    """A Tune callback that acts on hung and overlong trials (Tune itself waits for ever).

    Every `poll_s` it reads each running trial's progress record (`trial-<id>`, written by the
    trial: phases, KD / heal steps, eval batches). A trial with no heartbeat for its stall limit
    (`stall_after_s`; `load_stall_after_s` while it loads its base, and counted from the driver's
    first sight of the attempt when the trial never wrote a record) is killed and,
    `search.stall_retries` times at most, rerun in a fresh process: an infrastructure fault, as a
    crash is for a DNA host. A trial running longer than `search.trial_time_limit_s` is killed and
    stays an error. Each kill is appended to `incidents`
    and ends the trial's record as failed, so `yard status` shows it."""
    import ray
    from ray import tune

    from cluster.ops.progress import mark_task, read_task
    from cluster.ops.watch import attempt_stall, end_killed
    from tune.sweep.trial import trial_task

    limit = cfg.search.trial_time_limit_s
    # Tune pickles its callbacks with the experiment: the store (an S3 client) stays out of it
    store_uri, endpoint_url = store.uri, cfg.storage.endpoint_url

    class Watchdog(tune.Callback):
        def __init__(self):
            self.first_seen: dict[str, float] = {}  # trial -> when the driver first saw it running
            self.attempt_seen: dict[tuple[str, str], float] = {}  # (trial, actor) -> first sight
            self.stall_kills: dict[str, int] = {}
            self.checked = 0.0

        def __getstate__(self):
            return {k: v for k, v in self.__dict__.items() if k != "store"}

        @property
        def store(self):
            if "store" not in self.__dict__:
                self.__dict__["store"] = open_store(store_uri, endpoint_url)
            return self.__dict__["store"]

        def on_step_begin(self, iteration, trials, **info):
            now = time.time()
            if now - self.checked < poll_s:
                return
            self.checked = now
            for trial in trials:
                actor = trial.temporary_state.ray_actor
                if trial.status != "RUNNING" or actor is None:
                    continue
                tid = trial.trial_id
                began = self.first_seen.setdefault(tid, now)
                attempt = self.attempt_seen.setdefault((tid, actor._actor_id.hex()), now)
                try:
                    late, phase = attempt_stall(self.store, job_id, trial_task(tid), attempt,
                                               cfg.load_stall_after_s, now)  # before its first record: starting
                except Exception as exc:  # a store hiccup is not a hang
                    log.warning("watchdog: cannot read %s's progress: %s", tid, exc)
                    continue
                if late is not None:
                    retry = self.stall_kills.get(tid, 0) < cfg.search.stall_retries
                    self.stall_kills[tid] = self.stall_kills.get(tid, 0) + 1
                    reason = (f"trial {tid} stalled: no heartbeat for {late[0]:.0f}s while {phase} "
                              f"(limit {late[1]:.0f}s); killed" + ("; rerun in a fresh process" if retry else ""))
                    self._kill(trial, actor, reason, retry, {"kind": "stalled", "phase": phase,
                                                            "heartbeat_age_s": round(late[0], 1), "limit_s": late[1]})
                elif limit is not None and now - began > limit:
                    reason = (f"trial {tid} ran {now - began:.0f}s, past search.trial_time_limit_s={limit:g} "
                              f"while {phase}; killed")
                    self._kill(trial, actor, reason, False, {"kind": "time limit", "phase": phase,
                                                            "heartbeat_age_s": None, "limit_s": limit})

        def on_trial_complete(self, iteration, trials, trial, **info):
            # a trial ASHA stopped never finished its own record: end it, or `yard status`
            # would call it STALLED once its heartbeat ages
            self._end_record(trial, "stopped", "stopped by Tune before its last stage (ASHA)")

        def on_trial_error(self, iteration, trials, trial, **info):
            # A trial this watchdog killed keeps the kill's reason: `ray.kill` returns before the
            # process dies, and a last heartbeat written meanwhile sets its record back to running.
            killed = [i["reason"] for i in incidents if i["trial_id"] == trial.trial_id]
            self._end_record(trial, "failed", killed[-1] if killed else
                             "the trial errored (its row in the leaderboard says why)")

        def _end_record(self, trial, status: str, message: str) -> None:
            try:
                record = read_task(self.store, job_id, trial_task(trial.trial_id))
                if record is not None and record.get("status", "running") == "running":
                    mark_task(self.store, job_id, trial_task(trial.trial_id), status, message)
            except Exception as exc:  # a store hiccup: the record only shows stale
                log.warning("watchdog: cannot end %s's progress record: %s", trial.trial_id, exc)

        def _kill(self, trial, actor, reason: str, retry: bool, facts: dict) -> None:
            log.warning("%s", reason)
            if retry:  # Tune reruns a failed trial while its failures stay within max_failures
                trial.max_failures = trial.run_metadata.num_failures + 1
            kills = sum(i["trial_id"] == trial.trial_id for i in incidents) + 1
            # the killed attempt keeps a record of its own: a rerun writes the trial's record anew
            end_killed(self.store, job_id, trial_task(trial.trial_id), reason, kills)
            incidents.append({"trial_id": trial.trial_id, **facts, "retried": retry, "reason": reason})
            ray.kill(actor)

    watchdog = Watchdog()
    watchdog.__dict__["store"] = store
    return watchdog


def killed_reasons(rows: list[dict], incidents: list[dict]) -> list[dict]:
    """An errored trial the watchdog killed says why (Tune only saw its process die)."""
    last = {i["trial_id"]: i["reason"] for i in incidents}
    return [{**r, "error": last[r["trial_id"]]} if r["status"] == "error" and r["trial_id"] in last else r
            for r in rows]


def incidents_markdown(incidents: list[dict]) -> str:
    """The leaderboard's section on the trials the sweep killed (empty when none)."""
    if not incidents:
        return ""
    lines = ["", "## Trials the sweep killed", "",
             "| trial | why | phase | heartbeat age (s) | limit (s) | rerun |", "|---|---|---|---|---|---|"]
    lines += [f"| {i['trial_id']} | {i['kind']} | {i['phase']} | {'-' if i['heartbeat_age_s'] is None else i['heartbeat_age_s']}"
              f" | {i['limit_s']:g} | {'yes' if i['retried'] else 'no'} |" for i in incidents]
    return "\n".join(lines) + "\n"
