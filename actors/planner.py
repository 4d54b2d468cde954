"""Pack models onto warm hosts, and reject at plan time what no node can run.

Small models share a host and run one after another (the cold start is paid once per host);
when a GPU has room for several small models, hosts share it side by side (fractional GPUs);
a model that needs several GPUs gets a host of its own with `device_map="auto"`. A model no node
can run (compute capability, GPU count, memory, 4/8-bit without CUDA) is rejected here, never
after loading.

Ray reports GPUs and accelerator types per node, not compute capability or GPU memory, so those
come from `ACCELERATORS` (extend it, or pass `node_overrides`, for other types).
"""
from __future__ import annotations


import math
from dataclasses import dataclass, field, replace

from cluster.capacity.gpus import ACCELERATORS
from cluster.models.loading import expected_memory_gib
from cluster.models.registry import ModelRegistry, ModelSpec

MAX_SIDE_BY_SIDE = 4  # hosts sharing one GPU at most


@dataclass(frozen=True)
class NodeKind:
    """One kind of node of the cluster (Ray groups nodes by resources and accelerator type)."""

    name: str
    count: int
    cpus: float
    gpus: int
    cuda_capability: float | None
    gpu_mem_gib: float | None
    cpu_mem_gib: float


@dataclass
class HostPlan:
    host_id: str
    node_kind: str
    num_cpus: float
    num_gpus: float
    models: list[str] = field(default_factory=list)
    expected_mem_gib: float = 0.0  # the largest model it loads (one at a time)
    device_map: str = "single device"


@dataclass
class Plan:
    hosts: list[HostPlan]
    rejected: dict[str, str]  # model id -> one-line reason
    kinds: list[NodeKind] = field(default_factory=list)  # the cluster it was planned for

    def table(self) -> list[list[str]]:
        rows = [
            [h.host_id, h.node_kind, f"{h.num_cpus:g}", f"{h.num_gpus:g}", h.device_map, ", ".join(h.models), f"{h.expected_mem_gib:.2f}"]
            for h in self.hosts
        ]
        rows += [["REJECTED", "-", "-", "-", "-", mid, reason] for mid, reason in self.rejected.items()]
        return rows


def node_kinds_from_ray(ray_nodes: list[dict], node_overrides: dict[str, tuple[float, float]] | None = None) -> list[NodeKind]:
    """Group Ray's alive nodes into kinds: (CPUs, GPUs, accelerator type). A kind's memory is its
    smallest node's: nodes of one type report slightly different memory (two started seconds apart
    on one machine differed), and keying kinds on it split one kind in two of the same name."""
    table = {**ACCELERATORS, **(node_overrides or {})}
    groups: dict[tuple, list[float]] = {}
    for n in ray_nodes:
        if not n.get("Alive", True):
            continue
        res = n.get("Resources", {})
        accel = next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), None)
        key = (float(res.get("CPU", 0)), int(res.get("GPU", 0)), accel)
        groups.setdefault(key, []).append(round(res.get("memory", 0) / 2**30, 1))
    kinds = []
    for (cpus, gpus, accel), mems in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][2] or "", kv[0][0])):
        count, mem = len(mems), min(mems)
        cc, gmem = table.get(accel, (None, None)) if accel else (None, None)
        name = f"{gpus}x{accel}" if gpus else "cpu"
        kinds.append(NodeKind(name, count, cpus, gpus, cc, gmem, mem))
    names = [k.name for k in kinds]  # the plan places models by kind name: two kinds never share one
    return [replace(k, name=f"{k.name}-{k.cpus:g}cpu") if names.count(k.name) > 1 else k for k in kinds]


def _fits(mid: str, spec: ModelSpec, kind: NodeKind, headroom: float, engine: str = "hf") -> str | None:
    """None when `kind` can run the model, else why not."""
    mem = expected_memory_gib(spec)
    if kind.gpus == 0 and engine == "vllm":
        return "engine vllm needs a CUDA GPU"
    if kind.gpus == 0:
        if spec.load_in in ("4bit", "8bit"):
            return f"load_in {spec.load_in} needs a CUDA GPU"
        if spec.min_cuda_capability is not None:
            return f"needs compute capability >= {spec.min_cuda_capability}"
        if kind.cpu_mem_gib and mem > kind.cpu_mem_gib * headroom:
            return f"needs ~{mem:.1f} GiB, {kind.name} nodes have {kind.cpu_mem_gib:.1f} GiB"
        return None
    if spec.num_gpus > kind.gpus:
        return f"needs {spec.num_gpus} GPUs, {kind.name} nodes have {kind.gpus}"
    if spec.min_cuda_capability is not None:
        if kind.cuda_capability is None:
            return f"needs compute capability >= {spec.min_cuda_capability}, {kind.name} has an unknown one"
        if kind.cuda_capability < spec.min_cuda_capability:
            return f"needs compute capability >= {spec.min_cuda_capability}, {kind.name} has {kind.cuda_capability}"
    if kind.gpu_mem_gib is not None and mem > kind.gpu_mem_gib * spec.num_gpus * headroom:
        return f"needs ~{mem:.1f} GiB, {spec.num_gpus} x {kind.name.split('x', 1)[-1]} hold {kind.gpu_mem_gib * spec.num_gpus:.0f} GiB"
    return None


def plan_hosts(
    model_ids: list[str],
    registry: ModelRegistry,
    kinds: list[NodeKind],
    *,
    max_hosts: int = 2,
    cpus_per_host: float = 1.0,
    gpu_mem_headroom: float = 0.9,
    engine: str = "hf",
) -> Plan:
    """Assign every model to a host or reject it with a reason. With `engine="vllm"` a host
    holds whole GPUs (vLLM sizes its KV cache to a fraction of each GPU: no side by side) and
    a several-GPU model runs tensor-parallel."""
    rejected: dict[str, str] = {}
    placed: dict[str, list[tuple[str, ModelSpec]]] = {}  # node kind name -> models
    for mid in model_ids:
        if mid not in registry.models:
            rejected[mid] = f"model {mid}: unknown model id"
            continue
        spec = registry.get(mid)
        reasons = []
        for kind in kinds:  # GPU kinds first: models run where they run fastest
            why = _fits(mid, spec, kind, gpu_mem_headroom, engine)
            if why is None:
                placed.setdefault(kind.name, []).append((mid, spec))
                break
            reasons.append(f"{kind.name}: {why}")
        else:
            rejected[mid] = f"model {mid}: no node can run it ({'; '.join(reasons) or 'empty cluster'})"

    hosts: list[HostPlan] = []
    by_name = {k.name: k for k in kinds}
    for kind_name, models in placed.items():
        kind = by_name[kind_name]
        big = [(m, s) for m, s in models if s.num_gpus > 1]
        small = [(m, s) for m, s in models if s.num_gpus <= 1]
        for mid, spec in big:
            hosts.append(HostPlan(f"host-{len(hosts)}", kind_name, cpus_per_host, spec.num_gpus, [mid],
                                  expected_memory_gib(spec),
                                  f"vLLM tensor_parallel={spec.num_gpus}" if engine == "vllm" else "device_map=auto"))
        if not small:
            continue
        if kind.gpus == 0:
            slots = max(1, min(max_hosts, len(small), int(kind.count * kind.cpus // cpus_per_host) or 1))
            gpu_share = 0.0
        else:
            biggest = max(expected_memory_gib(s) for _, s in small)
            per_gpu = 1 if kind.gpu_mem_gib is None or engine == "vllm" else max(1, min(MAX_SIDE_BY_SIDE, int(kind.gpu_mem_gib * gpu_mem_headroom // max(biggest, 1e-6))))
            total_gpus = kind.count * kind.gpus
            slots = max(1, min(max_hosts, len(small), total_gpus * per_gpu))
            # side by side only when there are more hosts than GPUs
            gpu_share = 1.0 if slots <= total_gpus else 1.0 / math.ceil(slots / total_gpus)
        start = len(hosts)
        for i in range(slots):
            device = "cpu" if kind.gpus == 0 else ("single GPU" if gpu_share == 1.0 else f"{gpu_share:g} GPU, side by side")
            device += ", vLLM" if engine == "vllm" else ""
            hosts.append(HostPlan(f"host-{start + i}", kind_name, cpus_per_host, gpu_share, [], 0.0, device))
        # Longest-processing-time first: biggest spread over the hosts first. With vLLM the unit is
        # a run of same-shape models, kept together on one host: the engine swaps weights between
        # them instead of starting again (a group larger than a fair share is split).
        units = shape_runs(small, slots) if engine == "vllm" else [[ms] for ms in small]
        loads = [0.0] * slots
        for unit in sorted(units, key=lambda u: -sum(s.params_b for _, s in u)):
            i = loads.index(min(loads))
            host = hosts[start + i]
            for mid, spec in unit:
                host.models.append(mid)
                host.expected_mem_gib = max(host.expected_mem_gib, expected_memory_gib(spec))
                loads[i] += spec.params_b
    return Plan(hosts, rejected, list(kinds))


def shape_key(spec: ModelSpec) -> tuple:
    """Models a vLLM engine can swap between without starting again have the same architecture,
    size and precision; the registry's family, parameter count and dtype stand for that here (the
    host checks the real configs before it swaps: `cluster/engines/engine_vllm.py: engine_signature`)."""
    return (spec.family, spec.params_b, spec.dtype, spec.load_in, spec.num_gpus)


def shape_runs(models: list[tuple[str, ModelSpec]], slots: int) -> list[list[tuple[str, ModelSpec]]]:
    """The models in runs of one shape each, in their given order; a run holding more than a fair
    share of the parameters (total / slots) is cut into that many consecutive parts, so that one
    big family still spreads over the hosts."""
    groups: dict[tuple, list[tuple[str, ModelSpec]]] = {}
    for mid, spec in models:
        groups.setdefault(shape_key(spec), []).append((mid, spec))
    fair = sum(s.params_b for _, s in models) / max(1, slots)
    runs = []
    for members in groups.values():
        load = sum(s.params_b for _, s in members)
        parts = min(len(members), max(1, math.ceil(load / fair - 1e-9))) if fair > 0 else 1
        size = math.ceil(len(members) / parts)
        runs += [members[i:i + size] for i in range(0, len(members), size)]
    return runs
