"""AWS GPU instance types (`INSTANCES`) and the worker groups a cluster plan makes of them.

Shared by the launcher (cluster/capacity/launch.py writes a group per type and market) and the quota
preflight (cluster/capacity/quotas.py counts the vCPUs those groups need), so that neither imports the
other. `Instance.accelerator` is a key of `cluster.capacity.gpus.ACCELERATORS` (Ray's accelerator_type).
"""
from __future__ import annotations

from dataclasses import dataclass

from cluster.capacity.gpus import ACCELERATORS


@dataclass(frozen=True)
class Instance:
    name: str
    accelerator: str  # a key of cluster.capacity.gpus.ACCELERATORS (Ray's accelerator_type)
    gpus: int
    vcpus: int

    @property
    def capability(self) -> float:
        return ACCELERATORS[self.accelerator][0]

    @property
    def gib_per_gpu(self) -> float:
        return ACCELERATORS[self.accelerator][1]


INSTANCES: dict[str, Instance] = {i.name: i for i in (
    Instance("g6.xlarge", "L4", 1, 4), Instance("g6.12xlarge", "L4", 4, 48),
    Instance("g5.xlarge", "A10G", 1, 4), Instance("g5.12xlarge", "A10G", 4, 48),
    Instance("g5.48xlarge", "A10G", 8, 192),
    Instance("g6e.xlarge", "L40S", 1, 4), Instance("g6e.12xlarge", "L40S", 4, 48),
    Instance("g6e.48xlarge", "L40S", 8, 192),
    Instance("p5.4xlarge", "H100", 1, 16), Instance("p4d.24xlarge", "A100-40G", 8, 96),
    Instance("p4de.24xlarge", "A100-80G", 8, 96), Instance("p5.48xlarge", "H100", 8, 192),
    Instance("p5e.48xlarge", "H200", 8, 192), Instance("p5en.48xlarge", "H200", 8, 192),
    Instance("p6-b200.48xlarge", "B200", 8, 192),
)}


def worker_groups(cfg, groups: dict[str, list[str]]) -> list[tuple[Instance, str, int]]:
    """(instance type, market, most nodes) of every worker group: per chosen type a spot group, an
    on-demand group, or both (`spot_with_fallback`, the on-demand one capped by `max_on_demand_workers`).
    `cfg`: a `cluster.capacity.launch.ClusterConfig` (its market, max_workers and max_on_demand_workers)."""
    markets = {"spot": ["spot"], "on_demand": ["on_demand"], "spot_with_fallback": ["spot", "on_demand"]}[cfg.market]
    return [(INSTANCES[name], market, cfg.max_workers if market == "spot" or cfg.max_on_demand_workers is None
             else cfg.max_on_demand_workers) for name in groups for market in markets]
