"""Which node a condition fits, decided before anything runs: Ray's options for it, or why no node
of the cluster can take it (seed 003's 59 GB Gemma on 40 GB cards is refused here, not found
stuck at 0/128 an hour later).

The nodes come from this machine (a local Ray is not started to ask it) or, when a cluster address
is set, from Ray's node table. GPU memory and compute capability come from nvidia-smi locally and
from `cluster.capacity.gpus.ACCELERATORS` by accelerator type on a cluster.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass

from cluster.capacity.gpus import ACCELERATORS
from cluster.experiment.config import Resources


@dataclass(frozen=True)
class Node:
    name: str
    cpus: float
    memory_gib: float
    gpus: int
    accelerator: str | None = None
    gpu_mem_gib: float | None = None
    cuda_capability: float | None = None


def local_nodes(num_cpus: int | None = None, num_gpus: int | None = None) -> list[Node]:
    """This machine as the one node of a local Ray (what `ray.init` would see), without Ray."""
    mem = 0.0
    try:
        with open("/proc/meminfo") as f:
            mem = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:")) / 2**20
    except (OSError, StopIteration, ValueError):
        pass
    gpus, gpu_mem, cap, accel = [], None, None, None
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=20).stdout
            gpus = [ln.split(",") for ln in out.splitlines() if ln.count(",") == 2]
        except (OSError, subprocess.SubprocessError):
            gpus = []
    if gpus:
        gpu_mem = min(float(g[1]) for g in gpus) / 1024
        cap = min(float(g[2]) for g in gpus)
        accel = next((t for t in ACCELERATORS if t in gpus[0][0]), None)
    count = len(gpus) if num_gpus is None else num_gpus
    return [Node("local", float(num_cpus or os.cpu_count() or 1), round(mem, 1), count, accel,
                 round(gpu_mem, 1) if gpu_mem else None, cap)]


def ray_nodes() -> list[Node]:
    """The connected Ray cluster's alive nodes."""
    import ray

    out = []
    for n in ray.nodes():
        if not n.get("Alive", True):
            continue
        res = n.get("Resources", {})
        accel = next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), None)
        cap, mem = ACCELERATORS.get(accel, (None, None)) if accel else (None, None)
        out.append(Node(n.get("NodeManagerAddress", "?"), float(res.get("CPU", 0)), round(res.get("memory", 0) / 2**30, 1),
                        int(res.get("GPU", 0)), accel, mem, cap))
    return out


def _gpu_share(r: Resources, node: Node) -> float | None:
    """The GPUs one condition takes on `node`, None when it does not fit there."""
    if r.gpu_memory_gib is not None:
        if not node.gpus or (node.gpu_mem_gib is not None and r.gpu_memory_gib > node.gpu_mem_gib):
            return None
        if r.num_gpus is not None:
            return r.num_gpus
        per_gpu = math.floor(node.gpu_mem_gib / r.gpu_memory_gib) if node.gpu_mem_gib else 1
        return 1.0 / max(per_gpu, 1)
    return r.num_gpus or 0.0


def fit(r: Resources, nodes: list[Node]) -> tuple[dict | None, str]:
    """(Ray options for a condition, "") or (None, why no node takes it)."""
    why = []
    for node in nodes:
        gpus = _gpu_share(r, node)
        if r.num_cpus > node.cpus:
            why.append(f"{node.name}: {node.cpus:g} CPUs < {r.num_cpus:g}")
        elif r.memory_gib is not None and r.memory_gib > node.memory_gib:
            why.append(f"{node.name}: {node.memory_gib:g} GiB memory < {r.memory_gib:g}")
        elif gpus is None:
            have = f"{node.gpu_mem_gib:g} GiB GPUs" if node.gpus and node.gpu_mem_gib else "no GPU"
            why.append(f"{node.name}: {have} < {r.gpu_memory_gib:g} GiB")
        elif math.ceil(gpus) > node.gpus:
            why.append(f"{node.name}: {node.gpus} GPUs < {gpus:g}")
        elif r.accelerator_type is not None and node.accelerator != r.accelerator_type:
            why.append(f"{node.name}: {node.accelerator or 'no accelerator'} is not {r.accelerator_type}")
        elif r.min_cuda_capability is not None and (node.cuda_capability or 0) < r.min_cuda_capability:
            why.append(f"{node.name}: compute capability {node.cuda_capability or 'none'} < {r.min_cuda_capability:g}")
        else:
            opts = {"num_cpus": r.num_cpus, "num_gpus": gpus}
            if r.memory_gib is not None:
                opts["memory"] = int(r.memory_gib * 2**30)
            if r.accelerator_type is not None:
                opts["accelerator_type"] = r.accelerator_type
            return opts, ""
    return None, "; ".join(why) or "no node"
