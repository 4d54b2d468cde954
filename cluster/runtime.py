"""Ray runtime: connect to RAY_ADDRESS when set (a cluster, or the job a `ray job submit` runs
in), otherwise start a local Ray with the dashboard bound to loopback."""
from __future__ import annotations

import logging
import os

from cluster.config import RayConfig

log = logging.getLogger(__name__)


def dashboard_available() -> bool:
    try:
        import aiohttp  # noqa: F401
        import ray.dashboard  # noqa: F401  (ray[default] installs it)
    except ImportError:
        return False
    return True


def connect(cfg: RayConfig | None = None):
    """`ray.init` once per process; returns the RayContext (or None if already connected)."""
    import ray

    cfg = cfg or RayConfig()
    if ray.is_initialized():
        return None
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # Ray workers inherit this: their logs stream without buffering.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    from cluster.joblog import route_ray_output

    if address:
        log.info("connecting to Ray at %s", address)
        ctx = ray.init(address=address, log_to_driver=True)
        route_ray_output()  # workers' own output: to the job's log file, not the console
        return ctx
    dashboard = cfg.dashboard and dashboard_available() and os.environ.get("YARD_DASHBOARD", "1") != "0"
    ctx = ray.init(
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        include_dashboard=dashboard,
        dashboard_host=cfg.dashboard_host,
        log_to_driver=True,
        runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}},
    )
    route_ray_output()
    if dashboard and ctx.dashboard_url:
        log.info("local Ray started; dashboard at http://%s", ctx.dashboard_url, extra={"console": True})
    else:
        log.info("local Ray started (no dashboard)")
    return ctx


def cluster_summary() -> dict:
    """Ray's view of the cluster: total resources and accelerator types per node."""
    import ray

    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        nodes.append(
            {
                "node_id": n["NodeID"][:8],
                "address": n.get("NodeManagerAddress"),
                "cpus": res.get("CPU", 0),
                "gpus": res.get("GPU", 0),
                "accelerator_types": sorted(k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")),
                "memory_gib": round(res.get("memory", 0) / 2**30, 1),
            }
        )
    return {"gcs_address": ray.get_runtime_context().gcs_address, "resources": ray.cluster_resources(), "nodes": nodes}


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (the OS picks it): for apps that must not collide with a
    `yard serve` already on its default port."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
