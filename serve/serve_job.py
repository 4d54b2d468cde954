"""`yard serve CONFIG [--from-leaderboard SWEEP --top N] [--duration-s S]`: start the app and serve.

Validates the config, starts the OpenAI-compatible app on local Ray (or RAY_ADDRESS), prints the
URL and the served model ids, and serves until Ctrl-C (or `--duration-s`). `--from-leaderboard`
adds the N best ranked trials of a sweep run as HF candidates `<sweep>-rank<k>`, whose weights are
the trial's `<candidate>/model/` folder in the store (downloaded once when the store is S3).

    yard serve configs/serve.demo.yaml
    yard serve configs/serve.demo.yaml --from-leaderboard prune-kd --top 3 --duration-s 600
"""
from __future__ import annotations

import logging
import re
import time

from cluster.config import ConfigError, job_config, job_parser
from serve.config import CandidateConfig, ServeConfig

log = logging.getLogger(__name__)

SWEEP_KIND = "sweep"  # the store kind and ranking file the sweep publishes (tune/sweep/sweep.py)
RANKED_FILE = "ranked.json"


def leaderboard_candidates(cfg: ServeConfig, ref: str, top: int) -> list[CandidateConfig]:
    """HF candidates for the `top` best ranked trials of the sweep run `ref` ("NAME", "NAME/RUN"
    or "sweep/NAME/RUN", `cluster.store.runs.find_run`), read from the ranking the sweep published
    (`ranked.json`: data, so Serve never imports the sweep); RunRefError naming what exists when
    the run or enough ranked trials are missing."""
    from cluster.store.runs import RunRefError, find_run
    from cluster.store.storage import open_store

    store = open_store(cfg.storage.uri, cfg.storage.endpoint_url)
    run = find_run(store, SWEEP_KIND, ref)
    key = f"{run.prefix}/{RANKED_FILE}"
    if not store.exists(key):
        raise RunRefError(f"--from-leaderboard: {key} is missing (a sweep published before the ranking was "
                          f"stored as data); run that sweep again, or name a newer run")
    ranked = [r for r in store.get_json(key) if isinstance(r, dict) and r.get("rank") is not None]
    if not 1 <= top <= len(ranked):
        raise RunRefError(f"--top: {top} is not in 1..{len(ranked)} ({run.prefix} has {len(ranked)} ranked trials)")
    base = re.sub(r"[^A-Za-z0-9._-]", "-", run.model_id)
    out = []
    for row in ranked[:top]:
        candidate = row.get("candidate")
        if not isinstance(candidate, str) or not candidate.strip("/"):
            raise RunRefError(f"trial {row.get('trial_id')!r}: its row names no candidate run")
        out.append(CandidateConfig(id=f"{base}-rank{row['rank']}", path=candidate.strip("/")))
        log.info("rank %d: trial %s (Score %s) from %s", row["rank"], row.get("trial_id"), row.get("score"),
                 candidate)
    return out


def main(argv: list[str] | None = None) -> int:
    """The `yard serve` job; returns the exit code (bad input raises UserError: the CLI exits 2)."""
    parser = job_parser("yard serve", "serve candidates behind an OpenAI-compatible API",
                        config_help="a kind: serve config (configs/serve.demo.yaml)")
    parser.add_argument("--from-leaderboard", metavar="SWEEP", help="add the best trials of this sweep run")
    parser.add_argument("--top", type=int, default=3, help="how many trials --from-leaderboard adds (default 3)")
    parser.add_argument("--duration-s", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    args = parser.parse_intermixed_args(argv)
    if args.duration_s is not None and args.duration_s <= 0:
        raise ConfigError(f"--duration-s: {args.duration_s} must be > 0")

    cfg = job_config(args, ServeConfig)
    if args.from_leaderboard:
        added = leaderboard_candidates(cfg, args.from_leaderboard, args.top)
        try:
            cfg = ServeConfig.model_validate({**cfg.model_dump(), "candidates": [
                *(c.model_dump(exclude_unset=True) for c in cfg.candidates), *(c.model_dump() for c in added)]})
        except ValueError as exc:
            raise ConfigError(f"--from-leaderboard: {str(exc).splitlines()[-1].strip()}") from None

    from cluster.ops.jobs import run_job
    from cluster.store.storage import open_store
    from serve.deploy import check_app, shutdown, start_app

    check_app(cfg)  # bad input: one line, before the job record, Ray or Serve
    store = open_store(cfg.storage.uri, cfg.storage.endpoint_url)
    # a job like any other: `yard status` shows it serving, `yard cost` prices its replica-hours
    with run_job("serve", cfg, store, config_path=args.config, stall_after_s=HEARTBEAT_S * 6) as job:
        reporter = job.reporter("serve")
        reporter.phase("starting", item=", ".join(c.id for c in cfg.candidates))
        t0 = time.monotonic()
        start_s = serve_s = 0.0
        try:
            url = start_app(cfg)
            start_s = time.monotonic() - t0
            reporter.phase("serving", item=f"{url}/v1")
            print(f"serving at {url}/v1  (OpenAI-compatible; Ctrl-C stops)")
            for cand in cfg.candidates:
                print(f"  {', '.join(cand.served_ids()):40s} engine={cand.engine} "
                      f"{'model=' + cand.model if cand.model else 'path=' + str(cand.path)}")
            if cfg.resolved_api_key():
                print("  API key required: Authorization: Bearer $YARD_API_KEY")
            deadline = None if args.duration_s is None else time.monotonic() + args.duration_s
            beat = time.monotonic()
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))
                if time.monotonic() - beat >= HEARTBEAT_S:
                    reporter.heartbeat()
                    beat = time.monotonic()
        except KeyboardInterrupt:
            print("stopping")
        finally:
            import ray

            if start_s:
                serve_s = time.monotonic() - t0 - start_s
            if ray.is_initialized():  # a start that failed before Ray came up has nothing to stop
                shutdown()
            record_replicas(job, cfg, start_s or time.monotonic() - t0, serve_s, started=bool(start_s))
            reporter.finish("succeeded" if start_s else "failed")
    return 0


HEARTBEAT_S = 10.0


def record_replicas(job, cfg: ServeConfig, start_s: float, serve_s: float, *, started: bool = True) -> None:
    """A ledger row per candidate: its replicas' GPUs and CPUs for the app's start ("start") and
    the time it served ("generate": a replica holds its GPUs serving, busy or not). A start that
    failed is a failed row."""
    from cluster.capacity.ledger import unit_resources

    for cand in cfg.candidates:
        res = unit_resources(cand.num_gpus, cand.num_cpus, tasks=cand.num_replicas, accelerator=cand.accelerator_type)
        phases = {"start": start_s, **({"generate": serve_s} if started else {})}
        job.ledger.add(unit=cand.id, phases=phases, outcome="kept" if started else "failed",
                       where=f"{cand.num_replicas} replica(s)", **res)
