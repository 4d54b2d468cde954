"""Shared fixtures. Real parts only: a local Ray, moto's S3 server over HTTP, the toy zoo."""
import os

import pytest

pytest_plugins = ["tests.plugins.s3", "tests.plugins.zoo"]

# Tests never touch the developer's .yard or a real cluster.
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("YARD_DASHBOARD", "0")


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
