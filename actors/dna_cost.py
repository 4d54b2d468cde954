"""The DNA job's cost: a plan priced before launch, and a ledger row per attempt while it runs.

    cost_plan = plan_cost(cfg, plan, registry, store, probes=40)   # units, expected seconds, basis
    print(plan_table_markdown(cost_plan, table))                    # per node type: seconds, $ on-demand / spot
    meter = DnaMeter(job.ledger); meter.submitted(mid); meter.attempt(slot, mid, raw, final, attempt)

Plan: each model's expected seconds come from its latest fingerprint in the store (`timings.json`:
load, generate scaled to this job's probe count, embed) when there is one, else from a fingerprint
of a model of its shape (on vLLM one that was loaded the same way: weights swapped in, or a new
engine; a model's own fingerprint that loaded the other way gives all but its load), else from the
stated assumptions below; a host's start from the last DNA ledger in the store that measured one, else
an assumption. A host runs its models one after another, so a host's wall time is its start plus
its models', and the job's expected wall time is its slowest host's (or, where hosts queue for
GPUs, the GPU-seconds over the GPUs). A measured time holds for the
node type it was measured on: the plan prices the planner's placement, not other GPU types.

Ledger: the scheduler measures each attempt's wall time (submit to result, a fresh host's start
included); the host's own timings split it into phases: start (the host's process start, imports,
CUDA, encoder), load (load + unload), generate (sanity gate + generation), evaluate (validation +
embedding), idle (the rest: scheduling, store writes). A host's start is shared evenly by the attempts it ran once
the job is done (`DnaMeter.finish`): the amortization the seed's lesson 6 is about, and a first
model that fails is not charged the whole start that its successors used. An attempt whose host
died or was killed has only its wall time, booked under the phase it was last seen in.
"""
from __future__ import annotations

import logging
import math
import time

from actors.planner import shape_key
from cluster.capacity.ledger import Ledger, node_type_facts

log = logging.getLogger(__name__)

# Stated assumptions where the store has no measurement (the plan prints them).
# imports, CUDA init, encoder load; GPU: 17.8-22.4 s measured for a host's start on an H100 (issue 26's
# round, 2026-12-06: 9 hosts, 1.2-8 B shapes, a MiniLM-sized encoder)
ASSUMED_START_S = {"gpu": 25.0, "cpu": 20.0}
ASSUMED_LOAD_S = {"gpu": (10.0, 2.0), "cpu": (2.0, 30.0)}  # fixed s + s per billion parameters
ASSUMED_TOKENS_PER_S = {"gpu": 25.0, "cpu": 40.0}  # per sequence of a batch; CPU: the toy zoo's size
# vLLM decodes every probe at once: per sequence, 138 tokens/s for the 8 B shape and 230-310 for 1.2-4 B
# with 40 probes on an H100 (issue 26's round, BENCHMARKS.md)
ASSUMED_VLLM_TOKENS_PER_S = 100.0
ASSUMED_EMBED_S_PER_PROMPT = 0.05
# engine vllm on a GPU: a model of a new shape starts an engine (spawn, import, torch.compile, CUDA
# graphs: 45-132 s measured on an H200, BENCHMARKS.md), one of the previous model's shape swaps its
# weights into the running engine (2.1-2.4 s for 1.3 B): fixed s + s per billion parameters each
ASSUMED_VLLM_ENGINE_S = (90.0, 2.0)
ASSUMED_VLLM_SWAP_S = (1.0, 0.5)
SIBLINGS_LOOKED_AT = 8  # a model with no fingerprint of its own: same-shape models' fingerprints read for one
PHASE_OF = {"starting": "start", "loading": "load", "unloading": "load", "gate": "generate",
            "generating": "generate", "validating": "evaluate", "embedding": "evaluate", "idle": "idle"}


def _device(node_kind: str) -> str:
    return "gpu" if node_type_facts(node_kind)[0] else "cpu"


def _measured_model(store, mid: str, probes: int) -> dict | None:
    """Phases of the model's latest fingerprint (generation scaled to `probes`), or None."""
    try:
        art = store.latest("dna", mid, prefer=("timings.json",))
        t = store.get_json(art.key) if art is not None and art.name == "timings.json" else None
    except Exception as exc:  # noqa: BLE001 - a plan must not fail on an odd old run
        log.debug("no measured timings for %s: %s", mid, exc)
        return None
    if not t:
        return None
    scale = probes / max(int(t.get("prompts") or probes), 1)
    return {"load": float(t.get("load_s", 0)) + float(t.get("unload_s", 0)),
            "generate": float(t.get("gate_s", 0)) + float(t.get("generate_s", 0)) * scale,
            "evaluate": float(t.get("embed_s", 0)) * scale, "run": art.run.name,
            "engine_reused": t.get("engine_reused")}


def _measured_sibling(store, registry, mid: str, probes: int, swap: bool | None, cache: dict) -> dict | None:
    """A model without a fingerprint of its own priced by one of its shape that has one (the same
    architecture, size and dtype load and generate alike): the first in registry order whose
    measurement matches `swap` (vLLM: weights swapped in, or a new engine; None: the HF path, any).
    A vLLM measurement that does not say which it was is not used. At most `SIBLINGS_LOOKED_AT`
    fingerprints are read per shape."""
    shape = shape_key(registry.get(mid))
    key = (shape, swap)
    if key not in cache:
        cache[key] = None
        looked = 0
        for other in registry.ids():
            if other == mid or shape_key(registry.get(other)) != shape:
                continue
            if looked >= SIBLINGS_LOOKED_AT:
                break
            looked += 1
            found = _measured_model(store, other, probes)
            if found is not None and (swap is None or found["engine_reused"] is swap):
                cache[key] = {**found, "model": other}
                break
    return cache[key]


def _measured_start(store) -> float | None:
    """The mean host start of the newest DNA job ledger in the store that has one (a host's start
    is shared by its rows: summed per host first)."""
    from cluster.capacity.cost import read_jobs

    try:
        jobs = read_jobs(store, ["dna"])
    except Exception as exc:  # noqa: BLE001
        log.debug("no DNA ledgers: %s", exc)
        return None
    for job in reversed(jobs):
        hosts: dict[str, float] = {}
        for e in job.entries:
            hosts[e.where] = hosts.get(e.where, 0.0) + e.phases.get("start", 0.0)
        starts = [s for s in hosts.values() if s]
        if starts:
            return sum(starts) / len(starts)
    return None


def _assumed_load(device: str, vllm: bool, swap: bool, spec, assumed: set) -> float:
    """The stated load assumption for a model (vLLM: a new engine or a swap), noted in `assumed`."""
    fixed, per_b = ASSUMED_LOAD_S[device]
    if vllm:
        fixed, per_b = ASSUMED_VLLM_SWAP_S if swap else ASSUMED_VLLM_ENGINE_S
        assumed.add(f"vLLM: a new engine per shape {ASSUMED_VLLM_ENGINE_S[0]:.0f} s + "
                    f"{ASSUMED_VLLM_ENGINE_S[1]:g} s per billion parameters; the next model of the "
                    f"same shape swaps its weights in: {ASSUMED_VLLM_SWAP_S[0]:g} s + "
                    f"{ASSUMED_VLLM_SWAP_S[1]:g} s per billion")
    else:
        assumed.add(f"load {fixed:.0f} s + {per_b:.0f} s per billion parameters on {device}")
    return fixed + per_b * spec.params_b


def plan_cost(cfg, plan, registry, store, probes: int, node_start=None) -> dict:
    """The job's plan as ledger-shaped units (outcome "planned"): per model its node type,
    resources and expected phases; `basis` says per model where its figures come from. A host's
    start is shared by its models, or paid whole by each with `hosts.fresh_per_model`; `node_start`
    (a price table's `NodeStart`) adds a fresh node's allocation (start) and weight loading (load,
    the middle of its range) to every host start."""
    gen = cfg.generation
    fresh = cfg.hosts.fresh_per_model
    start_measured = _measured_start(store)
    units, basis, walls, assumed, host_starts, siblings = [], {}, [], set(), 0, {}
    for host in plan.hosts:
        device = _device(host.node_kind)
        vllm = cfg.engine.name == "vllm" and device == "gpu"
        accel, _ = node_type_facts(host.node_kind)
        start = start_measured if start_measured is not None else ASSUMED_START_S[device]
        if start_measured is None:
            assumed.add(f"host start {ASSUMED_START_S[device]:.0f} s on {device} (imports, CUDA, encoder)")
        share = 1 if fresh else len(host.models)  # as in the ledger: one host's start over its models
        host_starts += len(host.models) if fresh else 1
        wall, previous = 0.0, None
        for i, mid in enumerate(host.models):
            measured = _measured_model(store, mid, probes)
            shape = shape_key(registry.get(mid))
            swap = vllm and not fresh and cfg.engine.vllm.reuse_engine and shape == previous
            previous = shape
            want = swap if vllm else None  # vLLM: the way the model will load (HF: one way)
            how = " (weights swapped in)" if swap else " (new engine)" if vllm else ""
            # a model's own fingerprint whose engine loaded the other way prices all but its load
            own_load = measured is not None and (want is None or measured["engine_reused"] in (None, want))
            sibling = None if own_load else _measured_sibling(store, registry, mid, probes, want, siblings)
            if measured is not None:
                phases = {k: measured[k] for k in ("load", "generate", "evaluate")}
                basis[mid] = f"measured (run {measured['run']})"
                if not own_load:
                    phases["load"] = sibling["load"] if sibling else _assumed_load(device, vllm, swap, registry.get(mid),
                                                                                  assumed)
                    basis[mid] = (f"measured (run {measured['run']}, loaded the other way); its load{how}: "
                                  + (f"measured on {sibling['model']} (run {sibling['run']})" if sibling else "assumed"))
            elif sibling is not None:
                phases = {k: sibling[k] for k in ("load", "generate", "evaluate")}
                basis[mid] = f"measured on {sibling['model']}, the same shape (run {sibling['run']}){how}"
            else:
                if vllm:  # all probes in one go (up to max_num_seqs)
                    rounds, tokens_per_s = math.ceil(probes / cfg.engine.vllm.max_num_seqs), ASSUMED_VLLM_TOKENS_PER_S
                    assumed.add(f"vLLM: {tokens_per_s:.0f} new tokens/s per sequence, up to "
                                f"{cfg.engine.vllm.max_num_seqs} at once, {gen.max_new_tokens} new tokens each")
                else:
                    rounds, tokens_per_s = math.ceil(probes / gen.batch_size), ASSUMED_TOKENS_PER_S[device]
                    assumed.add(f"{tokens_per_s:.0f} new tokens/s per sequence on {device}, "
                                f"batches of {gen.batch_size}, {gen.max_new_tokens} new tokens each")
                phases = {"load": _assumed_load(device, vllm, swap, registry.get(mid), assumed),
                          "generate": rounds * gen.max_new_tokens / tokens_per_s,
                          "evaluate": probes * ASSUMED_EMBED_S_PER_PROMPT}
                basis[mid] = "assumed" + how
                assumed.add(f"embedding {ASSUMED_EMBED_S_PER_PROMPT} s per probe")
            phases["start"] = start / share
            if node_start is not None:
                phases["start"] += node_start.allocation_s / share
                phases["load"] += (node_start.seconds() - node_start.allocation_s) / share
            wall += sum(phases.values())
            # a fresh host per model: the names the scheduler gives them (host-0, host-0.2, ...)
            where = f"{host.host_id}.{i + 1}" if fresh and i else host.host_id
            units.append({"job_id": "", "kind": "dna", "unit": mid, "node_type": host.node_kind, "accelerator": accel,
                          "gpus": host.num_gpus, "cpus": host.num_cpus, "market": "", "phases": phases,
                          "outcome": "planned", "where": where})
        walls.append((host, wall))
    if start_measured is not None:
        basis["(host start)"] = f"measured {start_measured:.1f} s (a previous DNA job's ledger)"
    out = {"kind": "dna", "units": units, "basis": basis, "wall_s": round(expected_wall_s(walls, plan.kinds), 1),
           "hosts": len(plan.hosts), "host_starts": host_starts, "fresh_per_model": fresh, "probes": probes,
           "rejected": dict(plan.rejected)}
    if node_start is not None:
        low, high = node_start.load_s
        assumed.add(f"node start per host started: {node_start.allocation_s:.0f} s allocation and image pull + "
                    f"{low:.0f}-{high:.0f} s weight loading, priced at {node_start.seconds():.0f} s in all"
                    + (f" ({node_start.source})" if node_start.source else ""))
        out["node_start"] = {"allocation_s": node_start.allocation_s, "load_s": [low, high]}
    out["assumptions"] = sorted(assumed)
    return out


def expected_wall_s(walls: list[tuple], kinds) -> float:
    """The slowest host's wall time, or, where a node kind's hosts want more GPUs than it has (they
    queue: a 2-GPU host and two 1-GPU hosts on one 2-GPU node), its GPU-seconds over its GPUs."""
    gpus = {k.name: k.count * k.gpus for k in kinds}
    bound = max((w for _, w in walls), default=0.0)
    for name, total in gpus.items():
        on = [(h, w) for h, w in walls if h.node_kind == name and h.num_gpus > 0]
        if total and sum(h.num_gpus for h, _ in on) > total:
            bound = max(bound, sum(h.num_gpus * w for h, w in on) / total)
    return bound


def plan_table_markdown(cost_plan: dict, table) -> str:
    """Per node type of the placement: hosts, models, expected seconds and GPU-hours, cost on
    demand and on spot; then the job's expected wall time and the assumptions."""
    from cluster.capacity.cost import entry_usd, money, plan_entries

    by_type: dict[str, list] = {}
    for e in plan_entries(cost_plan):
        by_type.setdefault(e.node_type, []).append(e)
    lines = ["| node type | hosts | models | work s | GPU-h | on demand | spot |", "|---|---|---|---|---|---|---|"]
    total = {"on_demand": 0.0, "spot": 0.0}
    for node_type, rows in by_type.items():
        usd = {m: sum(entry_usd(e, table, m) for e in rows) for m in total}
        total = {m: total[m] + usd[m] for m in total}
        lines.append(f"| {node_type} | {len({e.where for e in rows})} | {len(rows)} | {sum(e.seconds for e in rows):.1f} | "
                     f"{sum(e.gpus * e.seconds for e in rows) / 3600:.4f} | {money(usd['on_demand'])} | {money(usd['spot'])} |")
    hosts = len({e.where for r in by_type.values() for e in r})  # host starts: one per model when fresh
    lines.append(f"| total | {hosts} | {sum(len(r) for r in by_type.values())} | "
                 f"{sum(e.seconds for r in by_type.values() for e in r):.1f} | | {money(total['on_demand'])} | "
                 f"{money(total['spot'])} |")
    lines += ["", f"Expected wall time {cost_plan.get('wall_s', 0):.0f} s (the slowest host; GPU-seconds over GPUs where hosts queue). Prices: {table.source}."]
    if cost_plan.get("fresh_per_model"):
        lines.append(f"A fresh host per model (`hosts.fresh_per_model`): {cost_plan.get('host_starts')} host starts, "
                     f"each model pays a whole one.")
    if cost_plan.get("node_start"):
        lines.append(_node_start_range(cost_plan["node_start"], [e for r in by_type.values() for e in r], table, total))
    measured = [f"{u}: {b}" for u, b in (cost_plan.get("basis") or {}).items() if not b.startswith("assumed")]
    if measured:
        lines.append("Measured: " + "; ".join(measured) + ".")
    for note in cost_plan.get("assumptions") or []:
        lines.append(f"- assumed: {note}")
    return "\n".join(lines)


def _node_start_range(node_start: dict, entries: list, table, total: dict) -> str:
    """The plan's total at both ends of the node start's weight-loading range (priced at its middle)."""
    from cluster.capacity.cost import entry_usd, money

    low, high = node_start["load_s"]
    middle = (low + high) / 2
    per_start = {e.where: e for e in entries}  # one node per host started, held as its host holds it

    def at(load_s: float) -> dict:
        return {m: total[m] + sum(entry_usd(e, table, m, seconds=load_s - middle) for e in per_start.values())
                for m in total}

    lo, hi = at(low), at(high)
    return (f"Node start: {len(per_start)} x ({node_start['allocation_s']:.0f} s + {low:.0f}-{high:.0f} s of weight "
            f"loading); the total with {low:.0f} s of loading is {money(lo['on_demand'])} on demand, "
            f"{money(lo['spot'])} spot; with {high:.0f} s, {money(hi['on_demand'])} and {money(hi['spot'])}.")


def cost_section(job, prices, wall_s: float) -> list[str]:
    """The report's last section: the plan beside the ledger, then the job's cost line (last)."""
    from cluster.capacity.cost import JobCost
    from cluster.capacity.cost_report import report_section

    this = JobCost(job.job_id, "dna", "running", "", round(wall_s, 1), job.ledger.entries, job.plan)
    return report_section(this, prices, "Plan beside what ran (work seconds and cost per model; `yard cost` "
                                        "has the rest):")


class DnaMeter:
    """Writes one ledger row per attempt the scheduler records (nothing without a ledger)."""

    def __init__(self, ledger: Ledger | None):
        self.ledger = ledger
        self.started: dict[str, float] = {}

    def finish(self) -> None:
        """Share each host's start evenly among the attempts it ran (their total is unchanged)."""
        if self.ledger is None:
            return
        hosts: dict[str, list] = {}
        for e in self.ledger.entries:
            hosts.setdefault(e.where, []).append(e)
        for entries in hosts.values():
            start = sum(e.phases.get("start", 0.0) for e in entries)
            if start > 0:
                for e in entries:
                    e.phases["start"] = round(start / len(entries), 4)

    def submitted(self, mid: str) -> None:
        self.started[mid] = time.time()

    def attempt(self, slot, mid: str, raw: dict, final: dict | None, attempt: int) -> None:
        """`raw`: the attempt's own outcome; `final`: the model's outcome when this attempt ended
        it, None when the model goes back to the queue."""
        if self.ledger is None:
            return
        wall = time.time() - self.started.pop(mid, time.time())
        timings = raw.get("timings") or {}
        where = slot.host_id or slot.plan.host_id
        start = float(raw.get("host_start_s") or 0.0)
        if start and raw.get("host_init_at") and getattr(slot, "started_at", 0.0):
            # a new host's process start (Ray placing it, the worker's own imports) is cold start too
            start += min(max(float(raw["host_init_at"]) - slot.started_at, 0.0), wall)
        if timings:
            phases = {"start": start,
                      "load": timings.get("load_s", 0.0) + timings.get("unload_s", 0.0),
                      "generate": timings.get("gate_s", 0.0) + timings.get("generate_s", 0.0),
                      "evaluate": timings.get("embed_s", 0.0)}
            phases["idle"] = max(wall - sum(phases.values()), 0.0)
        else:  # the host died or was killed: its last progress record says where (the wall time is known)
            # its start, when this was its first model (a warm host's start is on its earlier rows)
            start = 0.0 if any(e.where == where for e in self.ledger.entries) else min(start, wall)
            phases = {"start": start} if start else {}
            last = PHASE_OF.get(raw.get("phase") or "", "generate")
            phases[last] = phases.get(last, 0.0) + wall - start
        if raw.get("stalled"):
            outcome = "stalled"
        elif final is None:
            outcome = "retried"
        else:
            outcome = {"ok": "kept", "skipped": "skipped"}.get(final["status"], "failed")
        accel, _ = node_type_facts(slot.plan.node_kind)
        self.ledger.add(unit=mid, node_type=slot.plan.node_kind, accelerator=accel, gpus=slot.plan.num_gpus,
                        cpus=slot.plan.num_cpus, phases=phases, outcome=outcome, attempt=attempt,
                        where=where, reason=str((final or raw).get("reason") or ""))
