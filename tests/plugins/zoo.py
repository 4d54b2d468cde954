"""pytest plugin: the demo toy zoo (configs/zoo.demo.yaml), built once and reused across sessions.

The zoo lives in `$YARD_TEST_ZOO_DIR` (default `~/.cache/modelyard/test-zoo`); a session whose
config, corpus and zoo code are unchanged gets a cache hit in well under a second.

    def test_something(zoo):
        registry = ModelRegistry.load([zoo.registry_path])   # zoo.models: the registered ids
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def zoo_cache_dir() -> Path:
    """Where the test session's zoo is cached."""
    return Path(os.environ.get("YARD_TEST_ZOO_DIR", Path.home() / ".cache" / "modelyard" / "test-zoo")).expanduser()


@pytest.fixture(scope="session")
def zoo():
    """The demo zoo as a `cluster.zoo.ZooBuild` (built on first use, then a cache hit)."""
    from cluster.zoo import build_zoo, default_zoo_config

    cfg = default_zoo_config().model_copy(update={"zoo_dir": str(zoo_cache_dir())})
    return build_zoo(cfg)
