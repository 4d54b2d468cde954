"""Job lifecycle: the job record `yard status` reads (start, heartbeat, end), and a manifest in
the store at the end.

Every `yard <job>` runs inside `run_job(...)`, locally or under `ray job submit`. The manifest
(`jobs/<job name>/<run>/manifest.json`) holds the config as resolved, the git revision, package
versions, node/GPU facts, Ray's cluster view, start, end and status. It is written whatever the
outcome, so a crash never hides what ran.

    with run_job("chat", cfg, store, config_path=path) as job:
        reporter = job.reporter("host-0", total=len(models))
        ...
        job.add_artifact(key)
        if failures:
            job.fail(f"{len(failures)} model(s) failed")
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cluster.config import YardModel
from cluster.ledger import LEDGER_FILE, PLAN_FILE, Ledger
from cluster.progress import DEFAULT_STALL_AFTER_S, END_STATUSES, ProgressReporter
from cluster.storage import ArtifactStore, StoreError, check_part

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "modelyard", "ray", "torch", "transformers", "tokenizers", "accelerate", "peft", "trl", "datasets",
    "llm-dna", "llmcompressor", "compressed-tensors", "sentence-transformers", "pydantic", "boto3", "vllm", "unsloth",
)


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_revision() -> str:
    """HEAD of the checkout the code runs from ('+dirty' when modified); YARD_GIT_REV when the
    code was shipped without .git (ray job submit --working-dir)."""
    if os.environ.get("YARD_GIT_REV"):
        return os.environ["YARD_GIT_REV"]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --- the job record (`yard status` reads it) ---------------------------------------------------
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


@dataclass
class JobContext:
    name: str
    job_id: str
    store: ArtifactStore
    config: YardModel | None
    config_path: str | None
    started_at: float = field(default_factory=time.time)
    artifacts: list[str] = field(default_factory=list)
    failed_reason: str | None = None
    summary: dict = field(default_factory=dict)
    # what the work held and became (cluster/ledger.py) and the plan made before it started;
    # both are written beside the manifest
    ledger: Ledger | None = None
    plan: dict | None = None

    def reporter(self, task: str = "main", total: int | None = None, **kwargs) -> ProgressReporter:
        return ProgressReporter(self.store, self.job_id, task=task, total=total, **kwargs)

    def add_artifact(self, key: str) -> None:
        self.artifacts.append(key)

    def fail(self, reason: str) -> None:
        """Mark the job failed without raising: finished work is kept, the exit code is non-zero."""
        self.failed_reason = reason


def _cluster_view() -> dict | None:
    try:
        import ray

        if ray.is_initialized():
            from cluster.runtime import cluster_summary

            return cluster_summary()
    except Exception as exc:  # the manifest must be written even if Ray is gone
        return {"error": str(exc).splitlines()[0]}
    return None


def write_manifest(ctx: JobContext, status: str, message: str) -> str:
    from cluster.node import node_facts

    manifest = {
        "job_id": ctx.job_id,
        "job": ctx.name,
        "status": status,
        "message": message,
        "argv": sys.argv,
        "config_path": ctx.config_path,
        "config": ctx.config.model_dump(mode="json") if ctx.config is not None else None,
        "git_revision": git_revision(),
        "packages": package_versions(),
        "node": node_facts().to_dict(),
        "ray": _cluster_view(),
        "started_at": datetime.fromtimestamp(ctx.started_at, timezone.utc).isoformat(),
        "ended_at": datetime.now(timezone.utc).isoformat(),
        "seconds": round(time.time() - ctx.started_at, 2),
        "artifacts": ctx.artifacts,
        "summary": ctx.summary,
    }
    run = ctx.store.new_run("jobs", ctx.name)
    key = run.put_json("manifest.json", manifest)
    if ctx.ledger is not None and ctx.ledger.entries:
        run.put_bytes(LEDGER_FILE, ctx.ledger.to_jsonl().encode())
    if ctx.plan is not None:
        run.put_json(PLAN_FILE, ctx.plan)
    run.complete(status="ok" if status == "succeeded" else "failed", job_id=ctx.job_id)
    return key


@contextlib.contextmanager
def run_job(
    name: str,
    config: YardModel | None,
    store: ArtifactStore,
    *,
    config_path: str | None = None,
    stall_after_s: float = 600.0,
):
    """Run a job: job record first, manifest and final status last, whatever happens between."""
    from cluster.joblog import open_job_log, quiet_progress_bars
    from cluster.live import LiveView
    from cluster.prices import job_market

    market = job_market(config)  # a bad price table stops the job before its record: exit 2
    job_id = start_job(store, name, config_path=config_path, stall_after_s=stall_after_s)
    ctx = JobContext(name, job_id, store, config, config_path, ledger=Ledger(job_id, name, market))
    joblog = open_job_log(store, job_id).open()
    quiet_progress_bars()
    log.info("job %s started; its log: %s; progress: yard status --store %s", job_id, joblog.where, store.uri,
             extra={"console": True})
    view = LiveView(store, job_id).start()
    status, message = "failed", ""
    try:
        yield ctx
        status, message = ("failed", ctx.failed_reason) if ctx.failed_reason else ("succeeded", "")
    except KeyboardInterrupt:
        status, message = "stopped", "interrupted"
        raise
    except BaseException as exc:
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise
    finally:
        view.stop()
        key = None
        try:
            key = write_manifest(ctx, status, message)
        except Exception as exc:
            log.error("could not write the manifest of %s: %s", job_id, exc)
        end_job(store, job_id, status, message, manifest_key=key)
        log.info("job %s %s%s", job_id, status, f": {message}" if message else "",
                 extra={"console": status != "succeeded"})
        joblog.close()
