"""A job's log file: everything the frameworks say goes there, not to the console.

`yard` jobs print their progress (cluster/ops/live.py), result tables and report paths. Python logging
at INFO (DEBUG with `--verbose`), Ray's workers' and actors' own output (Ray Serve's access and
replica lines, `Loading weights` bars, Tune's per-trial tables, Ray's log-dedup notices) go to
the job's log: `<store>/logs/<job_id>.log` on a local store; on S3 a local file uploaded to
`logs/<job_id>.log` when the job ends. The path is printed once when the job starts. On the
console: warnings, errors and the few lines marked `extra={"console": True}`.

`yard -v` / `--verbose` or `YARD_LOG=debug` keeps the old behaviour: everything streams to the
console as well (and the file still gets it).

    with open_job_log(store, job_id) as joblog:   # done by cluster.ops.jobs.run_job
        print(joblog.where)
"""
from __future__ import annotations

import collections
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Ray worker lines that arrive while no job log is open (between ray.init and a job's start)
PENDING_LINES = 5000

_lock = threading.Lock()
_open: list[JobLog] = []  # the innermost open job log gets Ray's worker output
_pending: collections.deque[str] = collections.deque(maxlen=PENDING_LINES)


def verbose() -> bool:
    """`yard -v` sets YARD_LOG=debug; then the console gets everything, as before."""
    return os.environ.get("YARD_LOG", "").lower() in ("debug", "verbose", "1")


class _ConsoleFilter(logging.Filter):
    """On the console: warnings and worse, and records marked `extra={"console": True}`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or bool(getattr(record, "console", False))


_CONSOLE_FILTER = _ConsoleFilter()


def _console_handlers() -> list[logging.Handler]:
    """Handlers writing to the console: the root logger's and those frameworks attach to their own
    loggers (Ray's, Ray Serve's `INFO ... serve -- Started Serve` lines)."""
    loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    consoles = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    found = []
    for lg in loggers:
        found += [h for h in lg.handlers if isinstance(h, logging.StreamHandler)
                  and not isinstance(h, logging.FileHandler) and getattr(h, "stream", None) in consoles
                  and h not in found]
    return found


def tune_verbosity() -> int:
    """`RunConfig(verbose=...)` for a Tuner this process runs: 0 unless `yard -v`. Tune's new
    console output prints its "Configuration for experiment" box, "View detailed results here" and a
    TensorBoard command into Ray's temporary session folder at every verbosity, 0 included; its
    legacy reporter at 0 prints nothing, so that one is chosen (RAY_AIR_NEW_OUTPUT=0; a value the
    user set wins). yard prints the durable TensorBoard path itself."""
    if verbose():
        return 1
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return 0


def quiet_logger(name: str) -> None:
    """A framework logger that prints to the console by its own handler, outside any job log (Ray
    Serve's driver-side "INFO ... serve -- Started Serve" lines, set up when `ray.serve` is imported):
    its console handlers keep warnings and worse, as a job's console does. The product says what
    matters in its own line (where the app listens). `yard -v` leaves it as it is."""
    if verbose():
        return
    consoles = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    for h in logging.getLogger(name).handlers:
        if (isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                and getattr(h, "stream", None) in consoles and _CONSOLE_FILTER not in h.filters):
            h.addFilter(_CONSOLE_FILTER)


class JobLog:
    def __init__(self, store, job_id: str):
        self.store, self.job_id = store, job_id
        self.local_store = not store.uri.startswith("s3://")
        if self.local_store:
            self.path = Path(store.uri) / "logs" / f"{job_id}.log"
        else:
            self.path = Path(tempfile.gettempdir()) / "yard-logs" / f"{job_id}.log"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key = f"logs/{job_id}.log"
        self.where = str(self.path) if self.local_store else store.locate(self.key)
        self._file = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed in close()
        self._handler = logging.FileHandler(self.path, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        self._handler.setLevel(logging.DEBUG if verbose() else logging.INFO)
        self._filtered: list[logging.Handler] = []
        self._root_level = logging.NOTSET

    def open(self) -> JobLog:
        root = logging.getLogger()
        root.addHandler(self._handler)
        self._root_level = root.level
        if root.level > self._handler.level or root.level == logging.NOTSET:
            root.setLevel(self._handler.level)
        if not verbose():
            for h in _console_handlers():
                if _CONSOLE_FILTER not in h.filters:
                    h.addFilter(_CONSOLE_FILTER)
                    self._filtered.append(h)
        with _lock:
            _open.append(self)
            for line in _pending:
                self._file.write(line)
            _pending.clear()
            self._file.flush()
        return self

    def write_worker_lines(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()

    def close(self) -> None:
        with _lock:
            if self in _open:
                _open.remove(self)
        root = logging.getLogger()
        root.removeHandler(self._handler)
        if root.level == self._handler.level and self._root_level != self._handler.level:
            root.setLevel(self._root_level)  # as it was, unless someone changed it meanwhile
        self._handler.close()
        for h in self._filtered:
            h.removeFilter(_CONSOLE_FILTER)
        self._file.close()
        if not self.local_store:
            try:
                self.store.put_file(self.key, self.path)
            except Exception as exc:  # noqa: BLE001 - the job's own result stands; the log stays local
                log.warning("could not upload the job log to %s (kept at %s): %s", self.where, self.path, exc)

    def __enter__(self) -> JobLog:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def open_job_log(store, job_id: str) -> JobLog:
    return JobLog(store, job_id)


def quiet_progress_bars() -> None:
    """No `Loading weights` / download bars on the console (unless verbose): transformers' and
    huggingface_hub's tqdm bars are off in this process."""
    if verbose():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def _worker_lines(data: dict) -> str:
    who = data.get("actor_name") or data.get("task_name")
    where = ", ".join(f"{k}={data[k]}" for k in ("pid", "ip") if data.get(k) is not None)
    prefix = f"({who + ' ' if who else ''}{where}) " if where else ""
    return "".join(f"{prefix}{line}\n" for line in data.get("lines", []))


def _to_job_log(data: dict) -> None:
    text = _worker_lines(data)
    with _lock:
        if _open:
            _open[-1].write_worker_lines(text)
        else:
            _pending.extend(text.splitlines(keepends=True))


def route_ray_output() -> bool:
    """After `ray.init(log_to_driver=True)`: Ray's workers' output goes to the open job log, not
    the console (unless verbose). Idempotent (a later `ray.init` adds Ray's printer again; this
    takes it out again). False when this Ray keeps no such dispatcher: then Ray prints as always."""
    if verbose():
        return False
    try:
        from ray._private.ray_logging import (
            global_worker_stdstream_dispatcher as dispatcher,
        )
    except ImportError:
        return False
    if not all(hasattr(dispatcher, a) for a in ("remove_handler", "add_handler", "handlers")):
        return False
    dispatcher.remove_handler("ray_print_logs")
    if not any(name == "yard_job_log" for name, _ in dispatcher.handlers):
        dispatcher.add_handler("yard_job_log", _to_job_log)
    _route_raylet_lines()
    return True


def _route_raylet_lines() -> None:
    """The raylet's messages about this job's tasks ("(raylet) Task ServeController.graceful_shutdown
    failed ... infinite retries remaining" when Serve shuts down) reach the driver through Ray's error
    subscriber, which prints them itself, not through the dispatcher above: they go to the job log too.
    They read as errors on a console and are Ray's own bookkeeping; the job's outcome is the product's."""
    try:
        import ray._private.worker as ray_worker
    except ImportError:
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "yard_routed", False):
        return

    def print_to_stdstream(data, ignore_prefix: bool = False):
        if data.get("pid") == "raylet" and not verbose():
            _to_job_log({"lines": [f"(raylet) {line}" for line in data.get("lines", [])]})
            return
        original(data, ignore_prefix)

    print_to_stdstream.yard_routed = True
    ray_worker.print_to_stdstream = print_to_stdstream


# --- the process's own logging -----------------------------------------------------------------
class StderrHandler(logging.StreamHandler):
    """A log handler writing to whatever `sys.stderr` is when a record comes, not the stream that
    was current at setup: a redirected or replaced stderr (a test's capture, since closed) would
    otherwise turn every later log line into a "--- Logging error ---" traceback."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ / setStream assign it; the property wins
        pass


def make_logging_unbuffered(level: int = logging.INFO) -> None:
    """Line-buffered stdout/stderr, PYTHONUNBUFFERED=1 for subprocesses and Ray workers started
    after this call, and (if nothing configured logging yet) log lines to stderr. Buffered
    output is how a process that is making progress looks stuck in its log."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(line_buffering=True)
            except (ValueError, OSError):  # a closed or detached stream: nothing to do
                pass
    os.environ["PYTHONUNBUFFERED"] = "1"
    logging.basicConfig(level=level, handlers=[StderrHandler()],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
