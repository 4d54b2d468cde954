"""pytest plugin: the demo toy zoo (configs/zoo.demo.yaml), built once and reused across sessions.

The zoo lives in `$YARD_TEST_ZOO_DIR` (default `~/.cache/modelyard/test-zoo`); a session whose
config, corpus and zoo code are unchanged gets a cache hit in well under a second.

    def test_something(zoo):
        registry = ModelRegistry.load([zoo.registry_path])   # zoo.models: the registered ids

When the zoo is not built yet and the session has tests that need it, one process (the first
xdist worker, or the only one) starts `yard zoo build` in the background as soon as the tests are
collected, with its three bases training at once, while the workers run the tests that need no
zoo first (`tests/conftest.py` orders them). A test that needs the zoo waits on the build's lock
(`cluster.models.zoo.build_zoo`), then gets a cache hit. A build still running when the session ends
(every zoo test deselected or failed early) is stopped: the next session builds again.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BACKGROUND_TRAINERS = 3  # the demo zoo's three bases at once: nothing waits on a lone third base


def zoo_cache_dir() -> Path:
    """Where the test session's zoo is cached."""
    return Path(os.environ.get("YARD_TEST_ZOO_DIR", Path.home() / ".cache" / "modelyard" / "test-zoo")).expanduser()


def zoo_config():
    from cluster.models.zoo import default_zoo_config

    return default_zoo_config().model_copy(update={"zoo_dir": str(zoo_cache_dir())})


def uses_zoo(item) -> bool:
    return "zoo" in getattr(item, "fixturenames", ())


def zoo_ready() -> bool:
    """The test zoo is built for this code (cached per process: asked once per session)."""
    global _READY
    if _READY is None:
        from cluster.models.zoo import zoo_cached

        _READY = zoo_cached(zoo_config())
    return _READY


_READY: bool | None = None
_BUILD: subprocess.Popen | None = None


def pytest_collection_finish(session):
    """Start the background build (see the module docstring) from one process of the session."""
    global _BUILD
    worker = getattr(session.config, "workerinput", {}).get("workerid", "gw0")
    if worker != "gw0" or session.config.option.collectonly or not any(uses_zoo(i) for i in session.items):
        return
    if zoo_ready():
        return
    folder = zoo_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.build.log", "w") as log:
        _BUILD = subprocess.Popen(
            [sys.executable, "-m", "cluster", "zoo", "build", f"zoo_dir={folder}", f"num_threads={BACKGROUND_TRAINERS}"],
            cwd=Path(__file__).resolve().parents[2], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)


def pytest_sessionfinish(session):
    if _BUILD is not None and _BUILD.poll() is None:
        os.killpg(_BUILD.pid, signal.SIGKILL)
        _BUILD.wait()


@pytest.fixture(scope="session")
def zoo():
    """The demo zoo as a `cluster.models.zoo.ZooBuild` (built on first use, then a cache hit)."""
    from cluster.models.zoo import build_zoo

    if _BUILD is not None:
        _BUILD.wait()  # this process started it: do not race it for the lock
    cfg = zoo_config()
    build = build_zoo(cfg)
    if _BUILD is not None and _BUILD.returncode != 0:
        # the background build failed and this process built the zoo itself: say so in the log
        print(f"background zoo build exited {_BUILD.returncode}; built in the test instead", file=sys.stderr)
    return only_the_zoos_own(build, cfg)


def only_the_zoos_own(build, cfg):
    """The shared zoo as its config builds it. A test registers derived models only in a copy of it,
    but a cache dir that outlives sessions (CI's) once came with two sweep candidates registered in
    it, and tests that count the zoo failed: such extras are removed here (their dirs stay), and
    each is named on stderr with its notes (which run registered it)."""
    from cluster.models.zoo import unregister

    own = {spec.name for spec in cfg.specs()}
    extra = [mid for mid in build.models if mid not in own]
    for mid, notes in unregister(build.zoo_dir, extra).items():
        print(f"test zoo {build.zoo_dir}: {mid} was registered in the shared zoo ({notes}); unregistered",
              file=sys.stderr)
    return dataclasses.replace(build, models=[mid for mid in build.models if mid in own])
