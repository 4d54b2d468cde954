"""`yard run CONFIG [key=value ...] [--resume] [--force] [--plan]`: a grid of conditions of the
user's own script (or function) as one watched, resumable Ray job.

    yard run configs/experiment.demo.yaml
    yard run exp0.yaml grid.model=[llama,gemma] --plan     # conditions, resources, price
    ray job submit --working-dir . -- yard run exp0.yaml   # the same, on a cluster

Before Ray: the config, the grid, the placeholders, the script or function, and whether each
condition fits a node (exit 2 with one line otherwise). Then every condition whose latest run
finished ok with the same condition and code (`grid.run_key`) is reused, and the rest run as Ray
tasks with the resources they asked for. Each condition's output is its heartbeat and progress
(cluster/experiment/condition.py); the retry rules are the playbook's (cluster/ops/attempts.py); each
attempt is a ledger row. Exit 0 when every condition is ok, 1 otherwise.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

from cluster.config import ConfigError, UserError, job_config, job_parser, validate
from cluster.experiment.condition import KIND, ConditionSpec, run_condition
from cluster.experiment.config import ExperimentConfig, Resources
from cluster.experiment.fit import fit, local_nodes, ray_nodes
from cluster.experiment.grid import check_command, condition_id, conditions, render_argv, run_key, script_files
from cluster.experiment.results import row, write_results
from cluster.ops.attempts import Attempt, RetryPolicy
from cluster.ops.jobs import REPO_ROOT, run_job
from cluster.store.storage import MARKER, StoreError, open_store

log = logging.getLogger(__name__)
DEMO_CONFIG = REPO_ROOT / "configs" / "experiment.demo.yaml"
KILL_GRACE_S = 30.0  # a script's own watcher acts at stall_after_s; the job only if the worker is stuck too


class Planned:
    """The experiment resolved before Ray: conditions with ids, argv, Ray options and run keys."""

    def __init__(self, cfg: ExperimentConfig, config_path: str | None):
        self.cfg, self.config_path = cfg, config_path
        where = config_path or "experiment"
        conds = conditions(cfg, where)
        self.roots = tuple(dict.fromkeys(p for p in (Path.cwd(), Path(config_path).resolve().parent if config_path else None,
                                                      REPO_ROOT) if p is not None))
        self.workdir = str(Path(cfg.workdir).resolve()) if cfg.workdir else None
        if cfg.command is not None:
            check_command(cfg)
            files = script_files(cfg, self.roots)
            self.code_sha256 = _hash_files(files)
            self.code_files = [str(f) for f in files]
        else:
            module, _, name = cfg.function.partition(":")
            try:
                mod = importlib.import_module(module)
            except Exception as exc:  # ImportError, or the module's own error at import
                raise ConfigError(f"{where}: function: {module} does not import: {type(exc).__name__}: {exc}") from None
            if not callable(getattr(mod, name, None)):
                raise ConfigError(f"{where}: function: {module} has no function {name!r}")
            src = getattr(mod, "__file__", None)
            self.code_sha256 = _hash_files([Path(src)]) if src else hashlib.sha256(module.encode()).hexdigest()
            self.code_files = [src] if src else []
        self.items = []
        for c in conds:
            cid = condition_id(cfg.name, c)
            self.items.append({"id": cid, "condition": c, "resources": self.resources_for(c),
                               "argv": render_argv(cfg.command, c) if cfg.command else None,
                               "key": run_key(cfg, c, self.code_sha256)})

    def resources_for(self, condition: dict) -> Resources:
        r = self.cfg.resources
        for extra in self.cfg.resources_for:
            if all(condition.get(k) == v for k, v in extra.when.items()):
                r = r.model_copy(update=extra.model_dump(exclude={"when"}, exclude_unset=True))
        return r

    def place(self, nodes) -> None:
        """Ray options per condition; ConfigError naming the first condition no node takes."""
        for item in self.items:
            opts, why = fit(item["resources"], nodes)
            if opts is None:
                raise ConfigError(f"{self.config_path or 'experiment'}: resources: condition {item['id']} "
                                  f"({json.dumps(item['condition'], default=str)}) fits no node: {why}")
            item["options"] = opts


def _hash_files(files: list[Path]) -> str:
    from cluster.models.content import file_sha256

    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def finished_runs(store, experiment: str) -> dict[str, dict]:
    """condition id -> the marker of its latest complete run (plus "prefix"), in one listing."""
    latest: dict[str, tuple[str, str]] = {}
    prefix = f"{KIND}/{experiment}/"
    for key in store.list_keys(prefix):
        parts = key[len(prefix):].split("/")
        if len(parts) == 3 and parts[2] == MARKER and parts[0] != "results":
            cid, run = parts[0], parts[1]
            if cid not in latest or run > latest[cid][0]:
                latest[cid] = (run, key)
    out = {}
    for cid, (run, key) in latest.items():
        try:
            marker = store.get_json(key)
        except (StoreError, ValueError):
            continue
        out[cid] = {**marker, "prefix": f"{prefix}{cid}/{run}"}
    return out


def reusable(store, planned: Planned, force: bool) -> tuple[dict[str, dict], list[str]]:
    """(condition id -> its finished ok run with the same key, notes on why others rerun)."""
    if force:
        return {}, []
    done = finished_runs(store, planned.cfg.name)
    reuse, notes = {}, []
    for item in planned.items:
        marker = done.get(item["id"])
        if marker is None:
            continue
        if marker.get("status") != "ok":
            continue
        if marker.get("run_key") != item["key"]:
            notes.append(f"{item['id']}: code, command or env changed since {marker['prefix']}")
            continue
        result = None
        if "result.json" in marker.get("files", []):
            try:
                result = store.get_json(f"{marker['prefix']}/result.json")
            except (StoreError, ValueError) as exc:
                notes.append(f"{item['id']}: its result in {marker['prefix']} is unreadable ({exc}); running it again")
                continue
        reuse[item["id"]] = {**marker, "result": result}
    return reuse, notes


def measured_seconds(store, experiment: str) -> list[float]:
    return [float(m["seconds"]) for m in finished_runs(store, experiment).values()
            if m.get("status") == "ok" and m.get("seconds") is not None]


def print_plan(planned: Planned, store, todo: list[dict], reused: dict, prices) -> None:
    from cluster.capacity.ledger import unit_resources

    cfg = planned.cfg
    print(f"experiment {cfg.name}: {len(planned.items)} conditions, {len(reused)} finished earlier (reused), "
          f"{len(todo)} to run")
    for item in todo[:20]:
        o = item.get("options", {})
        print(f"  {item['id']:<40} cpus {o.get('num_cpus', 1):g} gpus {o.get('num_gpus', 0):g}  "
              f"{' '.join(item['argv']) if item['argv'] else cfg.function}")
    if len(todo) > 20:
        print(f"  ... and {len(todo) - 20} more")
    secs = measured_seconds(store, cfg.name)
    if not secs:
        print("price: no measured condition times in the store yet (run some conditions first)")
        return
    median = statistics.median(secs)
    usd = 0.0
    for item in todo:
        o = item.get("options", {})
        res = unit_resources(o.get("num_gpus", 0), o.get("num_cpus", 1))
        usd += prices.usd_per_hour(res["accelerator"], gpus=res["gpus"], cpus=res["cpus"]) * median / 3600
    print(f"price: {len(todo)} x {median:.1f}s (median of {len(secs)} measured conditions) = "
          f"{len(todo) * median / 3600:.2f} condition-hours, ${usd:.2f}")


def _ledger_outcome(outcome: str, action: str) -> str:
    if action == "ok":
        return "kept"
    if outcome == "stalled":
        return "stalled"
    if action == "retry":
        return "retried"
    return "skipped" if action == "skipped" else "failed"


def run_experiment_job(cfg: ExperimentConfig, config_path: str | None = None, *, resume: bool = False,
                       force: bool = False, plan: bool = False) -> tuple[int, list[dict], dict]:
    """The job; returns (exit code, result rows, summary). UserError (exit 2) before Ray for bad input."""
    from cluster.capacity.prices import job_prices

    planned = Planned(cfg, config_path)
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    import ray

    # where each condition fits, before any work (a zoo build included): the Ray this process is
    # already connected to, or this machine as the local Ray would see it; a cluster by address
    # is asked once connected, below
    if ray.is_initialized():
        planned.place(ray_nodes())
    elif not address:
        planned.place(local_nodes(cfg.ray.num_cpus, cfg.ray.num_gpus))
    prices = job_prices(cfg)
    if cfg.zoo or cfg.registry:  # the models a script may load: $YARD_REGISTRY (the zoo built or reused first)
        cfg = cfg.model_copy(update={"env": {**cfg.env, "YARD_REGISTRY": os.pathsep.join(
            str(Path(p).resolve()) for p in cfg.registry_paths())}})
    store = open_store(cfg.storage.uri, cfg.storage.endpoint_url)
    reused, notes = reusable(store, planned, force)
    if resume and not finished_runs(store, cfg.name):
        print(f"--resume: no earlier run of experiment {cfg.name} in {store.uri}; running every condition")
    todo = [i for i in planned.items if i["id"] not in reused]
    if address and not ray.is_initialized():
        from cluster.runtime import connect

        connect(cfg.ray)
        planned.place(ray_nodes())
    if plan:
        print_plan(planned, store, todo, reused, prices)
        return 0, [], {"status": "ok", "planned": len(todo), "reused": len(reused)}
    if reused:
        print(f"reused {len(reused)} of {len(planned.items)} conditions: their latest run finished ok with the "
              f"same condition, code and command ({cfg.name}); running {len(todo)}")
    for note in notes[:5]:
        log.info("rerun: %s", note)
    with run_job(cfg.name, cfg, store, config_path=config_path, stall_after_s=max(cfg.stall_after_s, 60.0)) as job:
        from cluster.runtime import connect

        connect(cfg.ray)
        rows = _run_conditions(job, cfg, planned, todo, store)
        by_id = {r["condition_id"]: r for r in rows}
        for item in planned.items:
            if item["id"] in reused:
                m = reused[item["id"]]
                by_id[item["id"]] = row(item["id"], item["condition"], "ok", attempts=0, seconds=float(m.get("seconds") or 0),
                                        result=m.get("result"), run=None, reused_from=m["prefix"])
        rows = [by_id[i["id"]] for i in planned.items]
        from cluster.capacity.cost_report import job_cost_line

        failed = [r for r in rows if r["status"] != "ok"]
        header = [f"{len(rows)} conditions: {len(rows) - len(failed)} ok, {len(failed)} not; "
                  f"{len(reused)} reused from earlier runs. Command: `{' '.join(cfg.command or [cfg.function])}`; "
                  f"code sha256 {planned.code_sha256[:12]}."]
        report = write_results(store, cfg.name, rows, job_id=job.job_id, header=header,
                               cost_line=job_cost_line(job, prices))
        job.add_artifact(report)
        job.summary = {"conditions": len(rows), "failed": len(failed), "reused": len(reused), "report": report}
        _print_table(cfg, rows)
        if failed:
            job.fail(f"{len(failed)} of {len(rows)} conditions not ok: " + ", ".join(r["condition_id"] for r in failed[:5]))
    print(f"results: {report.rsplit('/', 1)[0]}/results.csv (report.md beside it)")
    return (1 if failed else 0), rows, {"status": "failed" if failed else "ok", "report": report, **job.summary}


def _run_conditions(job, cfg: ExperimentConfig, planned: Planned, todo: list[dict], store) -> list[dict]:
    import ray

    from cluster.capacity.ledger import unit_resources
    from cluster.ops.progress import read_task, stalled
    from cluster.ops.watch import end_killed

    policy = RetryPolicy(retries=cfg.retries, stall_retries=cfg.stall_retries)
    remote = ray.remote(max_retries=0)(run_condition)
    main = job.reporter("main", total=len(todo))
    main.phase("running")
    inflight: dict[Any, tuple[ConditionSpec, dict]] = {}
    tries: dict[str, list[Attempt]] = {}
    rows: list[dict] = []

    def submit(item: dict, attempt: int) -> None:
        spec = ConditionSpec(cfg.name, item["id"], item["condition"], attempt, item["key"], job.job_id, store.uri,
                             getattr(store, "endpoint_url", None), argv=item["argv"], function=cfg.function,
                             env=cfg.env, workdir=planned.workdir, progress=cfg.progress, phases=cfg.phases,
                             stall_after_s=cfg.stall_after_s, time_limit_s=cfg.time_limit_s,
                             log_limit_bytes=cfg.log_limit_kib * 1024)
        inflight[remote.options(**item["options"]).remote(spec)] = (spec, item)

    for item in todo:
        submit(item, 1)
    last_watch = 0.0
    while inflight:
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
        finished: list[tuple[ConditionSpec, dict, dict]] = []
        for ref in ready:
            spec, item = inflight.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # outside the condition's own handling
                cause = getattr(exc, "cause", None) or exc
                line = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[-1][:200]}"
                outcome = {"outcome": "error", "signature": line, "reason": line}
            except ray.exceptions.RayError as exc:  # the worker or its node died
                line = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
                outcome = {"outcome": "infra", "signature": line, "reason": f"worker lost: {line}"}
            finished.append((spec, item, outcome))
        now = time.time()
        if now - last_watch >= 2.0:  # the backstop: a worker that stopped beating is cancelled
            last_watch = now
            for ref, (spec, item) in list(inflight.items()):
                record = read_task(store, job.job_id, spec.condition_id)
                if not record or (record.get("attempt") or 1) != spec.attempt or record.get("status") != "running":
                    continue  # not started yet (queued by Ray), or another attempt's record
                grace = 0.0 if spec.function else KILL_GRACE_S
                late = stalled({**record, "stall_after_s": spec.stall_after_s + grace}, now)
                over = (spec.time_limit_s is not None and spec.function
                        and now - float(record.get("started_at") or now) > spec.time_limit_s)
                if late is None and not over:
                    continue
                kind = "stalled" if late else "timeout"
                reason = (f"{spec.condition_id}: no heartbeat for {late[0]:.0f}s (limit {spec.stall_after_s:g}s); killed"
                          if late else f"{spec.condition_id}: past its time limit {spec.time_limit_s:g}s; killed")
                log.warning("%s", reason)
                ray.cancel(ref, force=True)
                inflight.pop(ref)
                finished.append((spec, item, {"outcome": kind, "signature": reason, "reason": reason,
                                              "run": _write_killed_run(store, spec, reason, kind)}))
        for spec, item, outcome in finished:
            kind = outcome["outcome"]
            tries.setdefault(spec.condition_id, []).append(Attempt(kind, outcome.get("signature", "")))
            decision = policy.decide(tries[spec.condition_id])
            if kind in ("stalled", "timeout"):
                end_killed(store, job.job_id, spec.condition_id, outcome["reason"], spec.attempt)
            o = item["options"]
            phases = outcome.get("phases") or {"run": float(outcome.get("seconds") or 0.0)}
            job.ledger.add(unit=spec.condition_id, phases=phases, outcome=_ledger_outcome(kind, decision.action),
                           attempt=spec.attempt, where=outcome.get("node", ""), reason=outcome.get("reason", ""),
                           **unit_resources(o.get("num_gpus", 0), o.get("num_cpus", 1)))
            if decision.action == "retry":
                log.warning("%s: %s; %s", spec.condition_id, outcome.get("reason", kind), decision.reason)
                submit(item, spec.attempt + 1)
                continue
            status = "ok" if decision.action == "ok" else ("skipped" if decision.action == "skipped" else
                                                          ("stalled" if kind == "stalled" else kind if kind == "timeout" else "failed"))
            reason = "" if status == "ok" else f"{decision.reason}: {outcome.get('reason', '')}"
            rows.append(row(spec.condition_id, item["condition"], status, attempts=spec.attempt,
                            seconds=float(outcome.get("seconds") or 0.0), result=outcome.get("result"),
                            run=outcome.get("run"), reason=reason, log_tail=outcome.get("log_tail")))
            main.advance(item=spec.condition_id)
    main.finish("succeeded" if all(r["status"] == "ok" for r in rows) else "failed")
    return rows


def _write_killed_run(store, spec: ConditionSpec, reason: str, kind: str) -> str:
    """A condition the job cancelled (its worker killed with it) wrote no run: record one, failed."""
    from cluster.store.storage import RunWriter, new_run_name

    run = RunWriter(store, KIND, f"{spec.experiment}/{spec.condition_id}", new_run_name())
    run.put_json("condition.json", {"experiment": spec.experiment, "condition_id": spec.condition_id,
                                    "condition": spec.condition, "attempt": spec.attempt, "function": spec.function,
                                    "argv": spec.argv, "outcome": kind, "reason": reason})
    run.complete(status="failed", run_key=spec.run_key, outcome=kind)
    return run.prefix


def _print_table(cfg: ExperimentConfig, rows: list[dict]) -> None:
    from rich.table import Table

    from cluster.console import console
    from cluster.experiment.results import columns

    cols = [c for c in columns(rows) if c not in ("run", "reason")][:12]
    table = Table(title=f"experiment {cfg.name}: {sum(r['status'] == 'ok' for r in rows)}/{len(rows)} ok")
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows[:60]:
        table.add_row(*[f"{r.get(c):.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols])
    console().print(table)
    if len(rows) > 60:
        print(f"... {len(rows) - 60} more rows in results.csv")


def run_experiment(config: str | Path | dict, overrides: list[str] | tuple[str, ...] = (), *, resume: bool = False,
                   force: bool = False) -> list[dict]:
    """From Python (a notebook): the same job as `yard run` (same store, status, resume), with the
    results table returned as rows.

        rows = run_experiment("configs/experiment.demo.yaml", ["grid.framing=[plain]"])
        pandas.DataFrame(rows)
    """
    from cluster.config import apply_overrides, load_config

    if isinstance(config, dict):
        data = apply_overrides(json.loads(json.dumps(config)), list(overrides))
        cfg, path = validate(data, ExperimentConfig, "<dict>"), None
    else:
        cfg, path = load_config(config, ExperimentConfig, overrides), str(config)
    _, rows, _ = run_experiment_job(cfg, path, resume=resume, force=force)
    return rows


def demo(store, zoo_registry: str, quick: bool = True) -> dict:
    """`yard demo`'s experiment step: the toy Exp0 (configs/experiment.demo.yaml) on the zoo `yard
    demo` built. A second `yard demo` on the same store reuses every condition (resume by content)."""
    from cluster.config import load_config

    overrides = ["zoo=null", f"registry=[{zoo_registry}]", f"storage.uri={store.uri}"]
    cfg = load_config(DEMO_CONFIG, ExperimentConfig, overrides)
    _, _, summary = run_experiment_job(cfg, str(DEMO_CONFIG))
    return summary


def main(argv: list[str]) -> int:
    parser = job_parser("yard run", "your own script or function over a grid of conditions, watched and resumable",
                        DEMO_CONFIG, config_help="experiment config (kind: experiment)")
    parser.add_argument("--resume", action="store_true", help="reuse finished conditions (a plain rerun does too)")
    parser.add_argument("--force", action="store_true", help="run every condition again")
    parser.add_argument("--plan", action="store_true", help="print the conditions, their resources and price; run nothing")
    args = parser.parse_intermixed_args(argv)
    if args.resume and args.force:
        raise UserError("yard run: --resume and --force contradict each other; give one")
    cfg = job_config(args, ExperimentConfig)
    code, _, _ = run_experiment_job(cfg, args.config, resume=args.resume, force=args.force, plan=args.plan)
    return code
