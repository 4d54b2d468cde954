"""`yard dna CONFIG`: LLM-DNA fingerprints of many models on warm Ray hosts, with the gates.

    yard dna configs/dna.demo.yaml                 # plan, extract, analyse, report
    yard dna configs/dna.demo.yaml --dry-run       # print the plan (hosts, GPUs, models, memory)
    yard dna configs/dna.demo.yaml --accept-suspicious
    yard dna configs/dna.demo.yaml --force          # regenerate every fingerprint (no reuse)
    yard dna configs/dna.demo.yaml --retry-skipped  # also retry models skipped in an earlier run
    yard dna import PATH... [--store S] [--name ID]   # llm-dna signatures / responses.json (actors/dna_import.py)

Reruns: a model whose newest fingerprint in the store has the same weights and settings is
reused, not loaded again (`actors/dna_reuse.py`); the plan, the ledger and the hosts cover only the
rest, the analysis and the report all of them.

Exit codes: 0 every model fingerprinted (or reused) and the tree published; 1 a model failed or was skipped
(every successful model's artifacts are kept, and the report lists each failure with its
reason: a failure is never "Completed"); 3 the outlier gate refused to publish the tree; 2 bad
input (config, probe file).

Retries: an infrastructure failure (the host actor or its node died, preemption) requeues the
model on a fresh host, on another node when there is one; a model-level error is retried once,
and the same error twice records the model as skipped; a gate failure is final at once.

The seed's way, for comparison (`hosts.fresh_per_model: true`): every model gets a new host, a
new process that pays imports, CUDA, the encoder, the engine and the weights again, and the host is
ended after its model; the plan prices a host start per model and each ledger row carries its own.

Hangs: the scheduler reads each busy host's progress record while it waits. A host whose
heartbeat is older than its phase's limit (`hosts.stall_after_s`, `hosts.load_stall_after_s`
while loading: what `yard status` shows as STALLED) is killed, its record ended as failed with the
reason, and its model retried on a fresh host as after a crash. The report lists every kill.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from actors.config import DnaConfig
from actors.dna_cost import DnaMeter, cost_section, plan_cost, plan_table_markdown
from actors.dna_reuse import REUSED, Rerun, decide_rerun
from actors.planner import HostPlan, Plan, node_kinds_from_ray, plan_hosts
from cluster.config import job_config, job_parser, load_config
from cluster.engines.engine import check_engine
from cluster.models.registry import ModelRegistry
from cluster.ops.attempts import Attempt, RetryPolicy
from cluster.ops.jobs import REPO_ROOT, run_job
from cluster.store.storage import open_store

log = logging.getLogger(__name__)
DEMO_CONFIG = REPO_ROOT / "configs" / "dna.demo.yaml"
EXIT_FAILED, EXIT_REFUSED = 1, 3
DONE = ("ok", REUSED)  # a model with a fingerprint: made by this job, or reused from an earlier one


def make_plan(cfg: DnaConfig, registry: ModelRegistry, model_ids: list[str]) -> Plan:
    import ray

    kinds = node_kinds_from_ray(ray.nodes())
    return plan_hosts(
        model_ids, registry, kinds,
        max_hosts=cfg.hosts.max_hosts, cpus_per_host=cfg.hosts.cpus_per_host, gpu_mem_headroom=cfg.hosts.gpu_mem_headroom,
        engine=cfg.engine.name,
    )


def print_plan(plan: Plan) -> None:
    from rich.table import Table

    from cluster.console import console as make_console

    table = Table(title="yard dna: plan")
    for col in ("host", "node", "CPUs", "GPUs", "placement", "models", "expected GiB / reason"):
        table.add_column(col, overflow="fold")
    for row in plan.table():
        table.add_row(*row)
    make_console().print(table)


@dataclass
class HostSlot:
    """A planned host, its live actor and the models still waiting for it."""

    plan: HostPlan
    queue: deque
    actor: object = None
    incarnation: int = 0
    dead_nodes: list[str] = field(default_factory=list)
    reports: list[dict] = field(default_factory=list)
    host_id: str | None = None  # the live actor's task name in the progress records
    started_at: float = 0.0


class Scheduler:
    """Feeds each host its models one at a time and applies the retry rules."""

    def __init__(self, cfg: DnaConfig, plan: Plan, registry_paths: list[str], job_id: str | None, probes, host_cls=None,
                 ledger=None, reuse_keys: dict[str, dict] | None = None):
        import ray

        from actors.host import ModelHost

        self.ray = ray
        self.host_cls = host_cls or ModelHost
        self.cfg, self.registry_paths, self.job_id, self.probes = cfg, registry_paths, job_id, probes
        self.reuse_keys = reuse_keys or {}  # each new run records its key, for the next rerun
        self.slots = [HostSlot(h, deque(h.models)) for h in plan.hosts]
        self.attempts: dict[str, list[dict]] = {}
        self.outcomes: dict[str, dict] = {}
        self.incidents: list[dict] = []  # hosts the job killed: {host, model, reason}
        self.meter = DnaMeter(ledger)  # a ledger row per attempt (actors/dna_cost.py)
        self.store = open_store(cfg.storage.uri, cfg.storage.endpoint_url)
        limits = (cfg.hosts.stall_after_s, cfg.hosts.load_stall_after_s)
        self.poll_s = max(0.5, min(5.0, min(limits) / 4))

    def _start(self, slot: HostSlot) -> None:
        opts = dict(num_cpus=slot.plan.num_cpus, num_gpus=slot.plan.num_gpus, max_restarts=0, max_task_retries=0)
        if slot.dead_nodes:
            # "retried on another host": prefer any node but the one that just failed
            alive = [n["NodeID"] for n in self.ray.nodes() if n.get("Alive") and n["NodeID"] not in slot.dead_nodes]
            if alive:
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(alive[0], soft=True)
        slot.incarnation += 1
        host_id = slot.plan.host_id if slot.incarnation == 1 else f"{slot.plan.host_id}.{slot.incarnation}"
        slot.host_id, slot.started_at = host_id, time.time()
        slot.actor = self.ray.remote(self.host_cls).options(**opts).remote(
            host_id, self.cfg.model_dump(mode="json"), self.registry_paths,
            self.cfg.storage.uri, self.cfg.storage.endpoint_url, self.job_id,
        )

    def _submit(self, slot: HostSlot, inflight: dict) -> None:
        if not slot.queue:
            return
        if slot.actor is None:
            self._start(slot)
        mid = slot.queue.popleft()
        self.meter.submitted(mid)
        ref = slot.actor.run_model.remote(mid, self.probes.probes, self.probes.probe_set_id, self.probes.sha256,
                                          self.reuse_keys.get(mid))
        inflight[ref] = (slot, mid)

    def _record(self, slot: HostSlot, mid: str, outcome: dict) -> None:
        final = self._decide(slot, mid, outcome)
        self.meter.attempt(slot, mid, outcome, final, len(self.attempts[mid]))

    def _decide(self, slot: HostSlot, mid: str, outcome: dict) -> dict | None:
        """The model's final outcome after this attempt, or None when it goes back to the queue.
        The rules are the playbook's, shared with `yard run` (cluster/ops/attempts.py): a lost or stalled
        host and an error are retried up to `retries.max_attempts`, the same error twice is skipped."""
        tries = self.attempts.setdefault(mid, [])
        tries.append(outcome)
        status = outcome["status"]
        if status in ("infra", "error"):
            policy = RetryPolicy(retries=self.cfg.retries.max_attempts - 1, stall_retries=0)
            decision = policy.decide([Attempt(t["status"], t.get("error_signature") or "")
                                      for t in tries if t["status"] in ("infra", "error")])
            if decision.action == "retry":
                if status == "infra":
                    log.warning("%s: host failed (%s); retrying on a fresh host", mid, outcome["reason"])
                else:
                    log.warning("%s: %s; retrying once to tell flaky from deterministic", mid, outcome.get("reason"))
                slot.queue.appendleft(mid)
                return None
            if decision.action == "skipped":
                outcome = {**outcome, "status": "skipped", "reason": f"model {mid}: {decision.reason}"}
            elif status == "infra":
                outcome = {**outcome, "status": "failed",
                           "reason": f"model {mid}: {len(tries)} host failures: {outcome['reason']}"}
            else:
                outcome = {**outcome, "status": "failed"}
        outcome["attempts"] = len(tries)
        self.outcomes[mid] = outcome
        return outcome

    def run(self) -> list[dict]:
        ray = self.ray
        inflight: dict = {}
        for slot in self.slots:
            self._submit(slot, inflight)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=self.poll_s)
            if not ready:
                self._kill_stalled(inflight)
                continue
            ref = ready[0]
            slot, mid = inflight.pop(ref)
            try:
                outcome = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                    ray.exceptions.ObjectLostError, ray.exceptions.RayTaskError) as exc:
                if isinstance(exc, ray.exceptions.RayTaskError) and not isinstance(exc, ray.exceptions.RayActorError):
                    # an error outside the host's per-model handling (a store write, a sticky CUDA
                    # error on release): the host's state is suspect, not the node; replace the host
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    line = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:200]}"
                    self.ray.kill(slot.actor)
                    note = f"host replaced after an error outside the model's step on {mid}"
                else:
                    slot.dead_nodes.append(getattr(exc, "node_id", None) or "")
                    line = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                    note = f"host died while on {mid}"
                slot.actor = None  # a fresh host takes the rest of this queue
                outcome = {"model_id": mid, "status": "infra", "reason": line}
                if self.job_id:  # its own record still says running: it died mid-phase
                    from cluster.ops.progress import mark_task, read_task

                    outcome.update(_last_known(read_task(self.store, self.job_id, slot.host_id)))  # before marking it
                    mark_task(self.store, self.job_id, slot.host_id, "failed", f"{note}: {outcome['reason'][:200]}")
            self._record(slot, mid, outcome)
            if (outcome.get("memory") or {}).get("returned") is False and slot.actor is not None:
                # the next model would start on a GPU the last one still holds: a fresh host takes over
                log.warning("%s: GPU memory not returned after %s; replacing the host", slot.plan.host_id, mid)
                self._retire(slot)
            if self.cfg.hosts.fresh_per_model and slot.actor is not None:
                self._retire(slot)  # the seed's way: the next model (or this one's retry) starts a new process
            self._submit(slot, inflight)
            if slot.actor is not None and not slot.queue and all(s is not slot for s, _ in inflight.values()):
                # its queue is done: its CPUs/GPUs go back now, for a fresh host that replaces
                # one whose node died (an idle host kept to the end would keep it pending forever)
                self._retire(slot)
        for slot in self.slots:
            if slot.actor is not None:
                self._retire(slot)
        self.meter.finish()
        return [self.outcomes[m] for m in sorted(self.outcomes)]

    def _kill_stalled(self, inflight: dict) -> None:
        """Kill every busy host whose heartbeat is past its limit; its model goes back to the
        queue as after a crash (an infrastructure failure: a fresh host, `retries.max_attempts`)."""
        from cluster.ops.progress import mark_task, read_task, stalled

        now = time.time()
        for ref, (slot, mid) in list(inflight.items()):
            record = read_task(self.store, self.job_id, slot.host_id) if self.job_id else None
            late = stalled(record, now)
            if record is None and now - slot.started_at > self.cfg.hosts.load_stall_after_s:
                late = (now - slot.started_at, self.cfg.hosts.load_stall_after_s)  # never reported at all
            if late is None:
                continue
            phase = (record or {}).get("phase") or "starting"
            reason = (f"host {slot.host_id} stalled: no heartbeat for {late[0]:.0f}s while {phase} {mid} "
                      f"(limit {late[1]:.0f}s); killed")
            log.warning("%s; retrying on a fresh host", reason)
            self.ray.kill(slot.actor)
            if self.job_id:
                mark_task(self.store, self.job_id, slot.host_id, "failed", reason)
            self.incidents.append({"host": slot.host_id, "model_id": mid, "phase": phase,
                                   "heartbeat_age_s": round(late[0], 1), "limit_s": late[1], "reason": reason})
            del inflight[ref]
            slot.actor = None
            self._record(slot, mid, {"model_id": mid, "status": "infra", "reason": reason, "stalled": True,
                                     **_last_known(record), "phase": phase})
            self._submit(slot, inflight)

    def _retire(self, slot: HostSlot) -> None:
        """Keep the host's report, finish its progress record and end the actor."""
        ray = self.ray
        try:
            slot.reports.append(ray.get(slot.actor.host_report.remote(), timeout=60))
            ray.get(slot.actor.close.remote(), timeout=60)
        except ray.exceptions.RayError as exc:
            log.warning("could not read %s's report: %s", slot.plan.host_id, exc)
        ray.kill(slot.actor)
        slot.actor = None

    def host_reports(self) -> list[dict]:
        return [r for s in self.slots for r in s.reports]


def _last_known(record: dict | None) -> dict:
    """From a host's last progress record, what its ledger row needs when the host is gone: the
    phase it was in and, once it had started, its start (as a live host reports them in its outcome)."""
    if not record:
        return {}
    out = {"phase": record.get("phase")}
    start = record.get("host_start") or {}
    if start.get("host_start_total_s") is not None:
        out["host_start_s"] = float(start["host_start_total_s"])
        out["host_init_at"] = record.get("started_at")
    return out


def analyse(cfg: DnaConfig, store, registry: ModelRegistry, outcomes, host_reports, accept_suspicious: bool,
            incidents: list[dict] | None = None, cost_md: list[str] | None = None):
    """Distances, tree, gates e (latest-wins) and f (outliers), report. Returns (published, report, summary)."""
    from actors import analysis
    from actors.report import write_report

    ok_ids = [o["model_id"] for o in outcomes if o["status"] in DONE]
    fps, missing = analysis.load_latest(store, ok_ids)
    # runs brought in by `yard dna import` join when made the same way as this job's vectors
    reference = next(iter(fps.values())).provenance if fps else None
    imported, left_out = analysis.load_imported(store, set(ok_ids), reference, analysis.waived(cfg.analysis))
    fps.update(imported)
    identical = [list(g) for g in cfg.identical]
    identical += [[mid, *registry.get(mid).identical_to] for mid in ok_ids if registry.get(mid).identical_to]
    known = set(registry.ids())
    families = {mid: registry.family_of(mid) if mid in known else mid for mid in fps}
    ids, dist = analysis.distance_matrix(fps, analysis.waived(cfg.analysis)) if len(fps) >= 2 else (list(fps), None)
    related = analysis.lineage_pairs({mid: registry.get(mid).parent if mid in known else None for mid in ids})
    suspicious = analysis.outlier_pairs(ids, dist, cfg.gates.outlier_distance, identical, related,
                                        cfg.gates.lineage_outlier_distance) if dist is not None else []
    published = bool(dist is not None) and (not suspicious or accept_suspicious)
    # the gate above reads plain cosine (absolute thresholds); the tree and lineage use cfg.analysis
    lineage_D = analysis.lineage_distances(fps, cfg.analysis)[1] if dist is not None else None
    report = write_report(
        store, outcomes=outcomes, fps=fps, ids=ids, D=lineage_D, tree_kind=cfg.tree, families=families,
        suspicious=suspicious, host_reports=host_reports,
        cfg_summary={"gates": cfg.gates.model_dump(), "generation": cfg.generation.model_dump(), "dna": cfg.dna.model_dump(),
                     "encoder": cfg.encoder.name, "accept_suspicious": accept_suspicious, "missing": missing,
                     "analysis": cfg.analysis.model_dump()},
        published=published, incidents=incidents, cost_md=cost_md,
    )
    summary = {"published": published, "suspicious": [list(p) for p in suspicious], "missing": missing, "report": report,
               "incidents": incidents or [], "imported": sorted(imported), "imports_left_out": left_out,
               # one fingerprint (with nothing in the store to set beside it) has no distances: no tree
               # to publish, and nothing the outlier gate refused
               "no_tree": None if dist is not None else f"{len(fps)} fingerprint(s); a tree needs 2 or more"}
    if dist is not None and len(set(families.values())) > 1:
        acc, _ = analysis.nearest_family_accuracy(ids, lineage_D, families)
        summary["nearest_family_accuracy"] = acc
        summary["family_pair_auroc"] = analysis.family_pair_auroc(ids, lineage_D, families)
    return published, report, summary


def run_dna(
    cfg: DnaConfig, *, config_path: str | None = None, dry_run: bool = False, accept_suspicious: bool = False, host_cls=None,
    force: bool = False, retry_skipped: bool = False,
) -> tuple[int, dict]:
    """The whole job; `host_cls` swaps the host class (tests inject failures through it). Models
    whose fingerprints can be reused are left out of the plan (`force`: none is;
    `retry_skipped`: models skipped in an earlier run are tried again)."""
    from actors.fingerprint import load_probes
    from cluster.capacity.prices import job_prices
    from cluster.runtime import connect

    store = open_store(cfg.storage.uri, cfg.storage.endpoint_url)
    registry_paths = cfg.registry_paths()
    registry = ModelRegistry.load(registry_paths)
    model_ids = cfg.models or registry.ids()
    source = config_path or "dna config"
    registry.check_ids(model_ids, source)  # before Ray starts: exit 2, not a failed job
    probes = load_probes(cfg.probes)  # an unreadable probe file stops everything, with one line
    prices = job_prices(cfg)  # a bad price table too
    if cfg.ray.address is None:  # a local cluster: this node's GPUs
        check_engine(cfg.engine, "engine", source=source)
    connect(cfg.ray)
    if cfg.ray.address is not None:
        import ray

        check_engine(cfg.engine, "engine", gpus=int(ray.cluster_resources().get("GPU", 0)), source=source)
    plan = make_plan(cfg, registry, model_ids)
    rerun = decide_rerun(store, cfg, registry, plan, probes, force=force, retry_skipped=retry_skipped)
    if rerun.reused or rerun.not_retried:  # only the new work is planned, priced and run
        plan = make_plan(cfg, registry, rerun.todo(model_ids))
    print_rerun(rerun, len(model_ids))
    if plan.hosts or plan.rejected:  # an empty table says less than the line above
        print_plan(plan)
    cost_plan = plan_cost(cfg, plan, registry, store, len(probes.probes), node_start=prices.node_start)
    print(plan_table_markdown(cost_plan, prices))
    reused = {m: o["reused_from"] for m, o in rerun.reused.items()}
    if dry_run:
        return 0, {"status": "ok", "plan": plan.table(), "cost_plan": cost_plan, "report": None, "reused": reused,
                   "not_retried": sorted(rerun.not_retried)}
    with run_job("dna", cfg, store, config_path=config_path, stall_after_s=cfg.hosts.stall_after_s) as job:
        t0 = time.time()
        job.plan = cost_plan
        scheduler = Scheduler(cfg, plan, registry_paths, job.job_id, probes, host_cls, ledger=job.ledger,
                              reuse_keys=rerun.keys)
        outcomes = sorted(scheduler.run() + rerun.outcomes(), key=lambda o: o["model_id"])
        outcomes += [{"model_id": m, "status": "rejected", "reason": r, "attempts": 0} for m, r in plan.rejected.items()]
        for o in outcomes:
            if o.get("artifact"):
                job.add_artifact(o["artifact"])
        cost_md = cost_section(job, prices, time.time() - t0)
        published, report, summary = analyse(cfg, store, registry, outcomes, scheduler.host_reports(), accept_suspicious,
                                             scheduler.incidents, cost_md)
        job.add_artifact(report)
        bad = [o for o in outcomes if o["status"] not in DONE]
        summary.update(models=len(outcomes), failed=len(bad), seconds=round(time.time() - t0, 1), reused=reused,
                       outcomes={o["model_id"]: o["status"] for o in outcomes}, cost=cost_md[-1])
        job.summary = summary
        print_outcomes(outcomes, summary)
        missing = summary.get("missing") or {}
        if bad or missing:
            job.fail(f"{len(bad) + len(missing)} of {len(outcomes)} model(s) not fingerprinted: "
                     + "; ".join([f"{o['model_id']} {o['status']}" for o in bad]
                                 + [f"{m} finished but unreadable at analysis ({r})" for m, r in missing.items()]))
            code = EXIT_FAILED
        elif summary["no_tree"]:
            code = 0  # the vectors are stored; there was nothing to draw
        elif not published:
            job.fail(f"refused to publish: suspicious pairs {summary['suspicious']} (rerun with --accept-suspicious after checking)")
            code = EXIT_REFUSED
        else:
            code = 0
    return code, {"status": "ok" if code == 0 else "failed", **summary}


def print_rerun(rerun: Rerun, total: int) -> None:
    """What the rerun reuses and why it generates or leaves out the rest (nothing on a fresh store)."""
    from cluster.console import console as make_console

    console = make_console()
    line = rerun.summary_line(total)
    if line:
        console.print(line, markup=False)
    for note in rerun.notes:
        console.print(note, markup=False, style="yellow")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def print_outcomes(outcomes: list[dict], summary: dict) -> None:
    from rich.table import Table

    from cluster.console import console as make_console

    table = Table(title="yard dna: models")
    for col in ("model", "status", "attempts", "valid", "avg chars", "s/prompt", "reason"):
        table.add_column(col, overflow="fold")
    for o in outcomes:
        stats, timings = o.get("stats") or {}, o.get("timings") or {}
        table.add_row(
            o["model_id"], o["status"], str(o.get("attempts", "-")),
            _fmt(stats.get("valid_fraction"), "{:.0%}"),
            _fmt(stats.get("avg_chars"), "{:.0f}"),
            _fmt(timings.get("sec_per_prompt"), "{:.3f}"),
            o.get("reason") or "",
        )
    console = make_console()
    console.print(table)
    acc = summary.get("nearest_family_accuracy")
    if acc is not None and acc == acc:  # NaN: no family has two members, nothing to score
        console.print(f"nearest-family accuracy: {acc:.0%}")
    for incident in summary.get("incidents") or []:
        console.print(f"[bold red]killed:[/] {incident['reason']}")
    for mid, why in (summary.get("missing") or {}).items():
        console.print(f"[bold red]unreadable at analysis:[/] {mid}: {why}")
    if summary.get("imported"):
        console.print(f"imported runs in the matrix: {', '.join(summary['imported'])}")
    for mid, why in (summary.get("imports_left_out") or {}).items():
        console.print(f"[yellow]imported run left out:[/] {mid}: {why}")
    if summary["suspicious"]:
        console.print(f"[bold red]suspicious pairs (outlier gate):[/] {summary['suspicious']}")
    if summary.get("no_tree"):
        console.print(f"no tree: {summary['no_tree']}; report: {summary['report']}")
    else:
        console.print(f"tree {'published' if summary['published'] else 'NOT published'}; report: {summary['report']}")
    if summary.get("cost"):
        console.print(summary["cost"], markup=False)


def main(argv: list[str]) -> int:
    if argv[:1] == ["import"]:  # `yard dna import PATH...`
        from actors.dna_import import main as import_main

        return import_main(argv[1:])
    parser = job_parser("yard dna", "LLM-DNA fingerprints on warm Ray hosts", DEMO_CONFIG)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--accept-suspicious", action="store_true", help="publish the tree despite suspicious pairs")
    parser.add_argument("--force", action="store_true",
                        help="generate every fingerprint again, even those an earlier run made with the same weights "
                             "and settings")
    parser.add_argument("--retry-skipped", action="store_true",
                        help="also retry models an earlier run skipped after the same error twice")
    args = parser.parse_intermixed_args(argv)
    cfg = job_config(args, DnaConfig)
    code, _ = run_dna(cfg, config_path=args.config, dry_run=args.dry_run, accept_suspicious=args.accept_suspicious,
                      force=args.force, retry_skipped=args.retry_skipped)
    return code


def demo(store, zoo_registry: str, quick: bool = True) -> dict:
    """`yard demo`'s DNA step: the demo config as shipped on the zoo `yard demo` built (all 40
    probes: the lineage of the demo zoo was measured on them, BENCHMARKS.md; fewer probes let a
    child land nearer another family). `quick` changes nothing here (about 80 s on 2 cores)."""
    overrides = ["zoo=null", f"registry=[{zoo_registry}]", f"storage.uri={store.uri}"]
    cfg = load_config(DEMO_CONFIG, DnaConfig, overrides)
    _, summary = run_dna(cfg, config_path=str(DEMO_CONFIG))
    return summary
