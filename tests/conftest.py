"""Shared fixtures. Real parts only: a local Ray, moto's S3 server over HTTP, the toy zoo."""
import contextlib
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path

import pytest

pytest_plugins = ["tests.plugins.s3", "tests.plugins.zoo"]

# Tests never touch the developer's .yard or a real cluster.
os.environ.pop("RAY_ADDRESS", None)
# One torch (OpenMP) thread per process, inherited by every subprocess and Ray worker the tests
# start: the suite runs 3 workers and their jobs' processes on 2 cores, where a second thread per
# process only spins waiting for a core (the zoo's plain-load test: 53 CPU-s with 2 threads, 12
# with 1, on a busy machine). Code that sizes its own threads (a host, a trial) still does.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("YARD_DASHBOARD", "0")


@pytest.fixture
def no_ray(monkeypatch):
    """Ray never starts: a bad input must be refused before any work (connecting fails the test)."""
    import ray

    import cluster.runtime

    def refuse(*args, **kwargs):
        raise AssertionError("Ray started before the input was checked")

    monkeypatch.setattr(cluster.runtime, "connect", refuse)
    monkeypatch.setattr(ray, "init", refuse)
    return refuse


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the test session (2 CPUs, no dashboard: it costs seconds per start). Its
    workers hold the S3 plugin's fake credentials (tests/plugins/s3.py), as a cluster's nodes hold
    their own: a job on moto's S3 server then runs on this Ray, not in a process of its own."""
    import ray

    from tests.plugins.s3 import FAKE_ENV

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": dict(FAKE_ENV)})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module of tiny-model tests: on a shared 2-core machine more
    threads than free cores makes a 96-wide matmul ~100x slower (10 ms instead of 0.07 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Longest first, so that `pytest -n 3 --dist loadfile --no-loadscope-reorder` (make test) packs the
# workers well: the minutes-long end-to-end modules start at once and the many short ones fill the
# gaps at the end. xdist queues the next module behind a worker's running one while that one has
# two tests or fewer pending (the demo is one test), so a short module follows each of the three
# longest: a long module never waits behind another on the same worker. The short ones use the
# zoo, so they keep their place while the zoo builds (below). Measured with YARD_TEST_TIMELINE
# (below) on 2 cores; a module not listed keeps its place after these.
HEAVY_FIRST = (
    "tests/cluster/test_demo_sweep_serve_persona.py",
    "tests/cluster/test_demo.py",
    "tests/cluster/models/test_zoo.py",
    # Then the modules that mostly wait (on processes they stopped, stand-in engines, timeouts: 1-7
    # CPU-s in 7-32 s each), while the two demo halves keep both cores busy. Left to the end, as
    # they were, they ran side by side with 1 of the 2 cores idle for half a minute.
    "tests/cluster/experiment/test_job.py",
    "tests/cluster/engines/test_engine_vllm.py",
    "tests/serve/judge/test_judge.py",
    "tests/serve/test_client.py",
    "tests/serve/probes/test_probes.py",
    "tests/tune/sweep/test_sweep.py",
    "tests/tune/compress/test_prune.py",
    "tests/actors/test_dna_job.py",
    "tests/tune/compress/test_ffn.py",
    "tests/tune/persona/test_job.py",
    "tests/actors/test_two_nodes.py",
    "tests/serve/test_app.py",
    "tests/tune/sweep/test_sweep_watchdog.py",
    "tests/cluster/test_ray_submit.py",
    "tests/cluster/capacity/test_cost_cli.py",
    "tests/cluster/store/test_storage.py",
    "tests/serve/test_app_one_slot.py",
    "tests/cluster/test_chat.py",
    "tests/tune/compress/test_quantize.py",
    "tests/serve/test_serve_job.py",
    "tests/tune/persona/test_sweep.py",
    "tests/actors/test_dna_cost.py",
)


# Modules of `quiet` tests (timing: they need the machine to themselves) run last, when the other
# worker is down to short tests, so that waiting for it costs seconds.
QUIET_LAST = ("tests/tune/sweep/test_timing_quiet.py",)


def pytest_collection_modifyitems(session, config, items):
    from tests.plugins.zoo import uses_zoo, zoo_ready

    rank = {path: i for i, path in enumerate(HEAVY_FIRST)}
    rank.update({path: 10_000 + i for i, path in enumerate(QUIET_LAST)})
    # While the zoo builds in the background (tests/plugins/zoo.py), the modules that need none go
    # first; every worker computes the same order (xdist requires it).
    needs_zoo = {item.nodeid.split("::", 1)[0] for item in items if uses_zoo(item)}
    building = bool(needs_zoo) and not zoo_ready()

    def key(item):
        path = item.nodeid.split("::", 1)[0]
        return (building and path in needs_zoo, rank.get(path, len(HEAVY_FIRST)))

    items.sort(key=key)  # stable: the order inside a module and among the rest is kept
    for item in items:  # `make check` leaves these out
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


def _lock_dir(config) -> Path:
    """One directory per test run, shared by its xdist workers (their common testrunuid)."""
    run = getattr(config, "workerinput", {}).get("testrunuid") or f"solo-{os.getpid()}"
    path = Path(tempfile.gettempdir()) / f"yard-tests-{run}"
    path.mkdir(exist_ok=True)
    return path


_HELD: dict = {}  # the running test's lock files (machine_alone converts its share)


@contextlib.contextmanager
def _machine_share(config, quiet: bool):
    """Every test holds a shared lock while it runs (fixture setup and teardown included); a
    `quiet` test holds it exclusively, so no other worker's test runs beside it. The turnstile
    keeps a stream of shared holders from starving a quiet test that waits."""
    folder = _lock_dir(config)
    with open(folder / "turnstile", "a") as turnstile, open(folder / "machine", "a") as machine:
        _take(turnstile, machine, fcntl.LOCK_EX if quiet else fcntl.LOCK_SH)
        _HELD.update(turnstile=turnstile, machine=machine)
        try:
            yield
        finally:
            _HELD.clear()
            fcntl.flock(machine, fcntl.LOCK_UN)


def _take(turnstile, machine, how: int) -> None:
    fcntl.flock(turnstile, fcntl.LOCK_EX)
    try:
        fcntl.flock(machine, how)
    finally:
        fcntl.flock(turnstile, fcntl.LOCK_UN)


@pytest.fixture
def machine_alone():
    """A context manager: inside it no other worker's test runs (the running ones finish first, new
    ones wait). For the part of a `quiet` test that measures time; the rest of it shares the
    machine like any test."""

    @contextlib.contextmanager
    def alone():
        turnstile, machine = _HELD["turnstile"], _HELD["machine"]
        fcntl.flock(machine, fcntl.LOCK_UN)  # a shared holder waiting for "exclusive" would wait on itself
        _take(turnstile, machine, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(machine, fcntl.LOCK_SH)  # back to sharing, as the test began

    return alone


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    started = time.time()
    # a quiet test that scopes its quiet part (machine_alone) shares the machine for the rest
    quiet = item.get_closest_marker("quiet") is not None and "machine_alone" not in getattr(item, "fixturenames", ())
    with _machine_share(item.config, quiet):
        yield
    if TIMELINE:  # YARD_TEST_TIMELINE=FILE: when each test ran and on which worker (tuning the schedule)
        worker = getattr(item.config, "workerinput", {}).get("workerid", "main")
        with open(TIMELINE, "a") as fh:
            fh.write(json.dumps({"worker": worker, "test": item.nodeid, "start": started, "end": time.time()}) + "\n")


TIMELINE = os.environ.get("YARD_TEST_TIMELINE")
