"""Facts about the node a piece of work runs on: GPUs, compute capability, memory.

Used by the load decision (reject before reading weights), job manifests and progress records.
torch is imported lazily so that status and config commands stay fast.
"""
from __future__ import annotations

import os
import platform
import socket
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class NodeFacts:
    hostname: str
    cuda: bool
    gpu_names: tuple[str, ...] = ()
    cuda_capabilities: tuple[float, ...] = ()
    gpu_mem_gib: tuple[float, ...] = ()
    cpu_mem_gib: float = 0.0
    cpu_count: int = 1
    cuda_visible_devices: str | None = None
    torch_version: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def gpu_count(self) -> int:
        return len(self.gpu_names)

    @property
    def max_capability(self) -> float | None:
        return max(self.cuda_capabilities) if self.cuda_capabilities else None

    def to_dict(self) -> dict:
        return asdict(self)


def _cpu_mem_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def node_facts() -> NodeFacts:
    """Read this node's facts (imports torch)."""
    import torch

    names, caps, mems = [], [], []
    cuda = torch.cuda.is_available()
    if cuda:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            names.append(props.name)
            caps.append(float(f"{props.major}.{props.minor}"))
            mems.append(round(props.total_memory / 2**30, 1))
    return NodeFacts(
        hostname=socket.gethostname(),
        cuda=cuda,
        gpu_names=tuple(names),
        cuda_capabilities=tuple(caps),
        gpu_mem_gib=tuple(mems),
        cpu_mem_gib=round(_cpu_mem_gib(), 1),
        cpu_count=os.cpu_count() or 1,
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        torch_version=torch.__version__,
        extra={"platform": platform.platform(), "python": platform.python_version()},
    )
