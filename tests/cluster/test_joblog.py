"""cluster/joblog.py: framework logs to the job's log file (a real `yard dna` run whose console holds
its tables and paths, not its workers' chatter: tests/actors/test_two_nodes.py, which runs one;
progress on the console: test_live.py)."""
import io
import logging
import os
import sys

import pytest

from cluster import joblog
from cluster.store.storage_local import LocalStore


@pytest.fixture
def quiet_env(monkeypatch):
    monkeypatch.delenv("YARD_LOG", raising=False)


@pytest.fixture
def console(monkeypatch):
    """The root logger with one console handler on a StringIO standing for stderr; handlers other
    tests of this worker left on the root logger (one on a closed capture file wrote a logging
    error, message included, to stderr) are set aside meanwhile."""
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    monkeypatch.setattr(root, "handlers", [handler])
    return handler


def _as_stderr(monkeypatch, handler) -> None:
    """The handler's stream is the console (set in the test itself: pytest's capture puts its own
    sys.stderr back between a fixture's setup and the test)."""
    monkeypatch.setattr(sys, "stderr", handler.stream)


def test_info_goes_to_the_file_warnings_and_marked_lines_to_the_console_too(tmp_path, quiet_env, console,
                                                                          monkeypatch):
    _as_stderr(monkeypatch, console)
    store = LocalStore(str(tmp_path / "store"))
    joblog._pending.extend(["early worker line\n"])  # arrived between ray.init and the job
    with joblog.open_job_log(store, "job-1") as jl:
        logging.getLogger("yard.test.framework").info("CALL generate OK 101.7ms")
        logging.getLogger("cluster.ops.jobs").info("job started", extra={"console": True})
        logging.getLogger("tune.sweep.sweep").warning("a trial was killed")
        joblog._to_job_log({"pid": 42, "actor_name": "ModelHost", "ip": "10.0.0.1", "lines": ["Loading weights"]})
    assert jl.path == tmp_path / "store" / "logs" / "job-1.log" and jl.where == str(jl.path)
    text = jl.path.read_text()
    for line in ("CALL generate OK", "job started", "a trial was killed", "(ModelHost pid=42, ip=10.0.0.1) Loading weights",
                 "early worker line"):
        assert line in text, line
    shown = console.stream.getvalue()
    assert "job started" in shown and "a trial was killed" in shown
    assert "CALL generate" not in shown and "Loading weights" not in shown
    assert console.filters == []  # the console is as it was once the job ended
    joblog._to_job_log({"pid": 1, "lines": ["after the job"]})  # no job open: kept for the next one
    assert "(pid=1) after the job\n" in joblog._pending
    joblog._pending.clear()


def test_verbose_keeps_everything_on_the_console(tmp_path, monkeypatch, console):
    monkeypatch.setenv("YARD_LOG", "debug")
    _as_stderr(monkeypatch, console)
    with joblog.open_job_log(LocalStore(str(tmp_path)), "job-2"):
        logging.getLogger("yard.test.framework").info("CALL generate OK")
    assert "CALL generate OK" in console.stream.getvalue()
    assert not joblog.route_ray_output()  # Ray prints its workers' lines itself


def test_make_logging_unbuffered_sets_the_env_for_children(monkeypatch):
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    from cluster.joblog import make_logging_unbuffered

    make_logging_unbuffered()
    assert os.environ["PYTHONUNBUFFERED"] == "1"


def test_the_stderr_log_handler_follows_sys_stderr(monkeypatch):
    """A stderr that was replaced and closed since setup (a test's capture) takes no log line."""
    import io
    import logging

    from cluster.joblog import StderrHandler

    handler = StderrHandler()
    old = io.StringIO()
    monkeypatch.setattr("sys.stderr", old)
    old.close()
    now = io.StringIO()
    monkeypatch.setattr("sys.stderr", now)
    handler.emit(logging.LogRecord("t", logging.WARNING, __file__, 1, "still seen", None, None))
    assert now.getvalue() == "still seen\n"


def test_ray_serve_info_lines_and_raylet_retry_notices_stay_off_the_console(tmp_path, quiet_env, monkeypatch):
    """Issue 27's first screen: Serve's own "INFO ... Started Serve" handler keeps warnings only, and
    the raylet's "Task ServeController.graceful_shutdown failed ... infinite retries" notice (printed
    by Ray's error subscriber, not its log dispatcher) goes to the job log."""
    import ray._private.worker as ray_worker

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    serve_logger = logging.getLogger("yard.test.serve")
    monkeypatch.setattr(serve_logger, "handlers", [logging.StreamHandler(stream)])
    monkeypatch.setattr(serve_logger, "propagate", False)
    joblog.quiet_logger("yard.test.serve")
    serve_logger.info('Started Serve in namespace "serve".')
    serve_logger.warning("a replica died")
    assert stream.getvalue() == "a replica died\n"

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)  # restored afterwards
    joblog._route_raylet_lines()
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    with joblog.open_job_log(LocalStore(str(tmp_path / "store")), "job-2") as jl:
        ray_worker.print_to_stdstream({"lines": ["Task ServeController.graceful_shutdown failed. There are "
                                                 "infinite retries remaining"], "pid": "raylet", "is_err": False},
                                      ignore_prefix=False)
    assert "(raylet) Task ServeController.graceful_shutdown failed" in jl.path.read_text()
    assert "graceful_shutdown" not in out.getvalue() + stream.getvalue()


def test_tune_runs_silent_unless_verbose(monkeypatch):
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    monkeypatch.setenv("YARD_LOG", "debug")
    assert joblog.tune_verbosity() == 1 and "RAY_AIR_NEW_OUTPUT" not in os.environ
    monkeypatch.delenv("YARD_LOG")
    assert joblog.tune_verbosity() == 0 and os.environ["RAY_AIR_NEW_OUTPUT"] == "0"  # no box, no temp paths
