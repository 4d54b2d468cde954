"""Shared fixtures. Real parts only: a local Ray, moto's S3 server over HTTP, the toy zoo."""
import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["tests.plugins.s3", "tests.plugins.zoo"]

# Tests never touch the developer's .yard or a real cluster.
os.environ.pop("RAY_ADDRESS", None)
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
    """One local Ray for the test session (2 CPUs, no dashboard: it costs seconds per start)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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


# Longest first, so that `pytest -n 2 --dist loadfile` (make test) packs the two workers well: the
# minutes-long end-to-end modules start at once and the many short ones fill the gaps at the end.
# Measured with --durations (slowest first); a module not listed keeps its place after these.
HEAVY_FIRST = (
    "tests/cluster/test_demo.py",
    "tests/tune/test_sweep.py",
    "tests/tune/persona/test_job.py",
    "tests/actors/test_dna_job.py",
    "tests/serve/test_app.py",
    "tests/tune/persona/test_sweep.py",
    "tests/cluster/test_ray_submit.py",
    "tests/cluster/test_storage.py",
)


# Modules of `quiet` tests (timing: they need the machine to themselves) run last, when the other
# worker is down to short tests, so that waiting for it costs seconds.
QUIET_LAST = ("tests/tune/test_timing_quiet.py",)


def pytest_collection_modifyitems(session, config, items):
    rank = {path: i for i, path in enumerate(HEAVY_FIRST)}
    rank.update({path: 10_000 + i for i, path in enumerate(QUIET_LAST)})

    def key(item):
        path = item.nodeid.split("::", 1)[0]
        return rank.get(path, len(HEAVY_FIRST))

    items.sort(key=key)  # stable: the order inside a module and among the rest is kept


def _lock_dir(config) -> Path:
    """One directory per test run, shared by its xdist workers (their common testrunuid)."""
    run = getattr(config, "workerinput", {}).get("testrunuid") or f"solo-{os.getpid()}"
    path = Path(tempfile.gettempdir()) / f"yard-tests-{run}"
    path.mkdir(exist_ok=True)
    return path


@contextlib.contextmanager
def _machine_share(config, quiet: bool):
    """Every test holds a shared lock while it runs (fixture setup and teardown included); a
    `quiet` test holds it exclusively, so no other worker's test runs beside it. The turnstile
    keeps a stream of shared holders from starving a quiet test that waits."""
    folder = _lock_dir(config)
    with open(folder / "turnstile", "a") as turnstile, open(folder / "machine", "a") as machine:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(machine, fcntl.LOCK_EX if quiet else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(machine, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    with _machine_share(item.config, item.get_closest_marker("quiet") is not None):
        yield
