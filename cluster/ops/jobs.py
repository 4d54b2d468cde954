"""Job lifecycle: the job record `yard status` reads (cluster/ops/job_record.py: start, heartbeat,
end), and a manifest in the store at the end.

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
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cluster.config import YardModel
from cluster.capacity.ledger import LEDGER_FILE, PLAN_FILE, Ledger
from cluster.ops.job_record import end_job, start_job
from cluster.ops.live import LiveView
from cluster.ops.progress import ProgressReporter
from cluster.store.storage import ArtifactStore

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
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
    # what the work held and became (cluster/capacity/ledger.py) and the plan made before it started;
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
    from cluster.capacity.prices import job_market
    from cluster.joblog import open_job_log, quiet_progress_bars

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
