"""Which GPUs this process holds and how much memory it reserved on them (progress records,
`yard status`), mapped to the node's physical ids; and what each accelerator type is
(`ACCELERATORS`: compute capability and memory, for the planner and `yard cluster config`)."""
from __future__ import annotations

import os
import sys

# Ray accelerator type -> (compute capability, GPU memory GiB)
ACCELERATORS: dict[str, tuple[float, float]] = {
    "T4": (7.5, 15.0), "V100": (7.0, 31.7), "A10G": (8.6, 22.0), "A10": (8.6, 22.0), "L4": (8.9, 22.0),
    "L40S": (8.9, 44.4), "L40": (8.9, 44.4), "A100": (8.0, 79.1), "A100-40G": (8.0, 39.4), "A100-80G": (8.0, 79.1),
    "H100": (9.0, 79.1), "H200": (9.0, 139.8), "B200": (10.0, 178.0), "RTX": (8.6, 22.0),
}


def physical_gpu_ids(visible_indices, cuda_visible_devices: str | None = None) -> list[int | str]:
    """Map torch's visible device indices to the node's GPU ids through CUDA_VISIBLE_DEVICES
    ("3,5" and index 1 -> 5). Unset: indices are the ids. Non-numeric entries (GPU UUIDs, MIG
    ids) are returned as strings."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES") if cuda_visible_devices is None else cuda_visible_devices
    if env is None or not env.strip():
        return [int(i) for i in visible_indices]
    entries = [e.strip() for e in env.split(",") if e.strip()]
    out: list[int | str] = []
    for i in visible_indices:
        if not 0 <= i < len(entries):
            raise ValueError(f"visible GPU index {i} out of range for CUDA_VISIBLE_DEVICES={env!r}")
        out.append(int(entries[i]) if entries[i].isdigit() else entries[i])
    return out


def gpu_facts() -> tuple[list[int | str], list[float]]:
    """(GPU ids, GiB this process reserved on each) cheaply: torch is consulted only when already
    imported, Ray only when initialized. In a Ray task the ids are every GPU Ray assigned to it.
    Without torch, the ids Ray assigned or the ids CUDA_VISIBLE_DEVICES names are reported, with no
    memory figures."""
    ids: list[int | str] = []
    ray = sys.modules.get("ray")
    try:
        if ray is not None and ray.is_initialized():
            ids = [int(g) if str(g).isdigit() else str(g) for g in ray.get_gpu_ids()]
    except Exception:  # not in a worker, or Ray shutting down: fall back to CUDA_VISIBLE_DEVICES
        ids = []
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        count = torch.cuda.device_count()
        reserved = [torch.cuda.memory_reserved(i) for i in range(count)]
        if ids and len(ids) == count:
            # Ray gave this task exactly these GPUs: all are its own, also those only its child
            # processes use (vLLM's tensor-parallel workers; measured on 2 x H200, issue 15)
            return ids, [round(r / 2**30, 2) for r in reserved]
        # the devices this process holds memory on; else the current one
        used = [i for i in range(count) if reserved[i] > 0] or [torch.cuda.current_device()]
        return physical_gpu_ids(used), [round(reserved[i] / 2**30, 2) for i in used]
    if not ids:
        env = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        if env and env != "-1":
            ids = [int(e) if e.strip().isdigit() else e.strip() for e in env.split(",") if e.strip()]
    return ids, []
