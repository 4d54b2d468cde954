"""One condition, run where Ray placed it: the user's script as a watched subprocess, or their
function in this process, with its output read as progress and its results written to the store.

The script runs without a shell, in a process group of its own (killing the condition kills
everything it started), with `PYTHONUNBUFFERED=1` (a print is seen when it is printed, not when a
buffer fills), `$YARD_OUT` (a fresh folder; only what is written there reaches the store) and
`$YARD_CONDITION` (the condition as JSON). It dies with the worker that runs it (PR_SET_PDEATHSIG).

Acting on trouble happens here, beside the process: a condition silent for `stall_after_s` is
killed ("stalled"), one running past `time_limit_s` too ("timeout"). The job decides what
follows (cluster/ops/attempts.py). A function cannot be killed from its own process: its job watches
its heartbeats from outside and cancels the Ray task (cluster/experiment/job.py).
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.capacity.gpus import gpu_facts
from cluster.experiment.output import BoundedLog, LineSplitter, OutputReader
from cluster.ops.attempts import error_signature
from cluster.ops.progress import ProgressReporter
from cluster.store.storage import RunWriter, new_run_name, open_store

log = logging.getLogger(__name__)

KIND = "experiments"  # store: experiments/<name>/<condition id>/<run>/
_PR_SET_PDEATHSIG = 1
try:  # resolved here, not in the forked child: the child must not import or allocate
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def _die_with_parent() -> None:
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class ConditionSpec:
    """Everything a worker needs to run one attempt at one condition (it travels to the worker)."""

    experiment: str
    condition_id: str
    condition: dict[str, Any]
    attempt: int
    run_key: str
    job_id: str
    store_uri: str
    endpoint_url: str | None
    argv: list[str] | None = None
    function: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    progress: str | None = None
    phases: dict[str, str] = field(default_factory=dict)
    stall_after_s: float = 600.0
    time_limit_s: float | None = None
    log_limit_bytes: int = 4 * 2**20


class ConditionContext:
    """What a `function:` experiment gets besides its condition: where to write, and how to report.

        def trial(condition, ctx):
            ctx.phase("loading")
            for i in range(100):
                ...
                ctx.progress(i + 1, 100)
            return {"accuracy": 0.9}
    """

    def __init__(self, spec: ConditionSpec, out_dir: Path, reporter: ProgressReporter, on_report=None):
        self.condition, self.condition_id, self.attempt = dict(spec.condition), spec.condition_id, spec.attempt
        self.out_dir = out_dir
        self._reporter, self._on_report = reporter, on_report or (lambda: None)

    def progress(self, done: int, total: int | None = None) -> None:
        self._on_report()
        self._reporter.update(done, total)

    def phase(self, name: str) -> None:
        self._on_report()
        self._reporter.phase(name)

    def heartbeat(self, **extra: Any) -> None:
        self._on_report()
        self._reporter.heartbeat(**extra)


class _Watch:
    """The bookkeeping shared by both ways of running: output -> log, progress, phase, result,
    timings by phase (start: until the first output; load: in a phase named load*; run: the rest)."""

    def __init__(self, spec: ConditionSpec, reporter: ProgressReporter, log_path: Path):
        self.spec, self.reporter = spec, reporter
        self.reader = OutputReader(spec.progress, spec.phases)
        self.log = BoundedLog(log_path, spec.log_limit_bytes)
        self.splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        self.t0 = self.last_output = time.monotonic()
        self.first_output: float | None = None
        self.phase_name: str | None = None
        self.phase_since = self.t0
        self.load_s = 0.0
        self.result: dict | None = None
        self.result_text = ""
        self.tail: deque[str] = deque(maxlen=30)

    def beat(self) -> None:
        now = time.monotonic()
        self.last_output = now
        if self.first_output is None:
            self.first_output = now

    def enter_phase(self, name: str) -> None:
        now = time.monotonic()
        if self.phase_name and self.phase_name.startswith("load"):
            self.load_s += now - self.phase_since
        self.phase_name, self.phase_since = name, now
        self.reporter.phase(name)

    def feed(self, stream: str, data: bytes) -> None:
        self.beat()
        self.log.write(data)
        lines = self.splitters[stream].feed(data)
        self._lines(stream, lines)
        if not lines:
            self.reporter.heartbeat()

    def flush(self) -> None:
        for stream, splitter in self.splitters.items():
            self._lines(stream, splitter.flush())

    def _lines(self, stream: str, lines: list[str]) -> None:
        for line in lines:
            if not line.strip():
                continue
            self.tail.append(line)
            seen = self.reader.read(line, stream)
            if seen.phase and seen.phase != self.phase_name:
                self.enter_phase(seen.phase)
            if seen.done is not None:
                self.reporter.update(seen.done, seen.total)
            else:
                self.reporter.heartbeat()
            if seen.result is not None:
                self.result = seen.result
            if stream == "stdout":
                self.result_text = line.strip()[:2000]

    def phases(self) -> dict[str, float]:
        end = time.monotonic()
        if self.phase_name and self.phase_name.startswith("load"):
            self.load_s += end - self.phase_since
        start = (self.first_output or end) - self.t0
        total = end - self.t0
        return {"start": round(start, 3), "load": round(self.load_s, 3), "run": round(max(total - start - self.load_s, 0.0), 3)}


def run_condition(spec: ConditionSpec) -> dict:
    """Run one attempt; write its store run (complete: ok or failed); return its outcome:
    {"outcome": ok | error | stalled | timeout, "signature", "reason", "phases", "seconds",
    "node", "gpu_ids", "run", "result", "result_text", "exit_code", "log_tail"}."""
    store = open_store(spec.store_uri, spec.endpoint_url)
    reporter = ProgressReporter(store, spec.job_id, task=spec.condition_id, stall_after_s=spec.stall_after_s,
                                console=False)
    scratch = Path(tempfile.mkdtemp(prefix=f"yard-{spec.condition_id}-"))
    out_dir = scratch / "out"
    out_dir.mkdir()
    log_path = Path(tempfile.gettempdir()) / "yard-experiments" / spec.job_id / f"{spec.condition_id}.{spec.attempt}.log"
    watch = _Watch(spec, reporter, log_path)
    gpu_ids = gpu_facts()[0]  # the GPUs Ray gave this task (CUDA_VISIBLE_DEVICES outside Ray)
    header = (f"[yard: condition {spec.condition_id} attempt {spec.attempt} on {socket.gethostname()}, GPUs "
              f"{','.join(map(str, gpu_ids)) or 'none'} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')})]\n")
    watch.log.write(header.encode())
    reporter.heartbeat(log=str(log_path), **({"attempt": spec.attempt} if spec.attempt > 1 else {}))
    outcome: dict[str, Any] = {"condition_id": spec.condition_id, "attempt": spec.attempt, "node": socket.gethostname(),
                               "gpu_ids": gpu_ids, "log": str(log_path)}
    try:
        if spec.argv is not None:
            outcome.update(_run_command(spec, watch, out_dir, gpu_ids))
        else:
            outcome.update(_run_function(spec, watch, out_dir))
    finally:
        watch.flush()
        watch.log.close()
    outcome["phases"] = watch.phases()
    outcome["seconds"] = round(sum(outcome["phases"].values()), 3)
    outcome.setdefault("result", watch.result)
    outcome["result_text"] = watch.result_text
    outcome["log_tail"] = list(watch.tail)[-10:]
    outcome["run"] = _write_run(store, spec, outcome, log_path, out_dir)
    ok = outcome["outcome"] == "ok"
    reporter.extra.pop("log", None)  # the live log's path, for a running condition: now it is in the store
    if outcome["outcome"] in ("stalled", "timeout"):
        reporter.finish("failed", outcome["reason"])
    else:
        reporter.finish("succeeded" if ok else "failed", "" if ok else outcome.get("reason", ""))
    with contextlib.suppress(OSError):
        import shutil

        shutil.rmtree(scratch)
    return outcome


def _condition_env(spec: ConditionSpec, out_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in spec.env.items()})
    env.update(PYTHONUNBUFFERED="1", YARD_OUT=str(out_dir), YARD_CONDITION=json.dumps(spec.condition, default=str),
               YARD_CONDITION_ID=spec.condition_id, YARD_ATTEMPT=str(spec.attempt))
    return env


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[2]) == pgid:
                    pids.append(int(entry))
    return pids


def _child_gpu_probe(pgid: int, gpu_ids: list):
    """(GPU ids, GiB the condition's processes use) from nvidia-smi, at most every 10 s."""
    cache = {"at": float("-inf"), "mem": []}

    def probe() -> tuple[list, list]:
        if not gpu_ids:
            return [], []
        now = time.monotonic()
        if now - cache["at"] >= 10.0:
            cache["at"] = now
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid,used_memory",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
                pids = set(_group_pids(pgid))
                used = sum(float(parts[2]) for parts in (ln.split(",") for ln in out.splitlines())
                           if len(parts) == 3 and parts[0].strip().isdigit() and int(parts[0]) in pids)
                cache["mem"] = [round(used / 1024, 2)]
            except (OSError, subprocess.SubprocessError, ValueError):
                cache["mem"] = []
        return gpu_ids, cache["mem"]

    return probe


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _run_command(spec: ConditionSpec, watch: _Watch, out_dir: Path, gpu_ids: list) -> dict:
    # "python" is the job's own interpreter (its venv), whatever PATH the worker has
    argv = [sys.executable, *spec.argv[1:]] if spec.argv[0] in ("python", "python3") else spec.argv
    try:
        proc = subprocess.Popen(argv, cwd=spec.workdir or None, env=_condition_env(spec, out_dir),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=_die_with_parent)
    except OSError as exc:  # the program is not there, or not executable, on this node
        return {"outcome": "error", "signature": f"{type(exc).__name__}: {exc.strerror}: {spec.argv[0]}",
                "reason": f"could not start {spec.argv[0]}: {exc}", "exit_code": None}
    watch.reporter.gpu_probe = _child_gpu_probe(proc.pid, gpu_ids)
    sel = selectors.DefaultSelector()
    streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    killed: tuple[str, str] | None = None
    exited_at: float | None = None
    while streams:
        for key, _ in sel.select(timeout=0.5):
            try:
                data = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if data:
                watch.feed(streams[key.fd], data)
            else:
                sel.unregister(key.fd)
                del streams[key.fd]
        now = time.monotonic()
        if gpu_ids:
            watch.reporter.refresh()  # GPU memory while the script loads in silence; no heartbeat
        if proc.poll() is not None:
            # the script is gone; what it left running in its group may hold the pipes: 2 s more
            exited_at = exited_at or now
            if now - exited_at > 2.0:
                break
            continue
        silent = now - watch.last_output
        if silent > spec.stall_after_s:
            killed = ("stalled", f"no output for {silent:.0f}s while {watch.phase_name or 'running'} "
                                 f"(limit {spec.stall_after_s:g}s); killed")
        elif spec.time_limit_s is not None and now - watch.t0 > spec.time_limit_s:
            killed = ("timeout", f"running for {now - watch.t0:.0f}s (time limit {spec.time_limit_s:g}s); killed")
        if killed:
            _kill_group(proc)
            break
    _kill_group(proc)  # nothing of the condition outlives it
    sel.close()
    code = proc.wait()
    for f in (proc.stdout, proc.stderr):
        f.close()
    if killed:
        watch.log.write(f"\n[yard: {killed[1]}]\n".encode())
        return {"outcome": killed[0], "signature": killed[1], "reason": killed[1], "exit_code": code}
    if code == 0:
        return {"outcome": "ok", "exit_code": 0}
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        sig = f"killed by signal {name}"
    else:
        sig = error_signature("\n".join(watch.tail)) or f"exit code {code}"
    return {"outcome": "error", "signature": sig, "reason": f"exit code {code}: {sig}", "exit_code": code}


class _Tee(io.TextIOBase):
    """sys.stdout/sys.stderr while a function runs: every write is output, as a script's would be."""

    def __init__(self, watch: _Watch, stream: str):
        self.watch, self.stream = watch, stream

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:
            self.watch.feed(self.stream, text.encode("utf-8", "replace"))
        return len(text)


def _run_function(spec: ConditionSpec, watch: _Watch, out_dir: Path) -> dict:
    import importlib

    module, _, name = spec.function.partition(":")
    ctx = ConditionContext(spec, out_dir, watch.reporter, on_report=watch.beat)
    old_env = {k: os.environ.get(k) for k in ("YARD_OUT", "YARD_CONDITION_ID")}
    os.environ.update(YARD_OUT=str(out_dir), YARD_CONDITION_ID=spec.condition_id)
    try:
        fn = getattr(importlib.import_module(module), name)
        with contextlib.redirect_stdout(_Tee(watch, "stdout")), contextlib.redirect_stderr(_Tee(watch, "stderr")):
            value = fn(dict(spec.condition), ctx)
    except Exception as exc:  # the condition's error, reported as one; the worker goes on
        import traceback

        text = traceback.format_exc()
        watch.log.write(text.encode())
        sig = error_signature(f"{type(exc).__name__}: {exc}")
        return {"outcome": "error", "signature": sig, "reason": sig, "exit_code": None}
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result = value if isinstance(value, dict) else ({"value": value} if value is not None else None)
    return {"outcome": "ok", "exit_code": 0, "result": json.loads(json.dumps(result, default=str)) if result else None}


def _write_run(store, spec: ConditionSpec, outcome: dict, log_path: Path, out_dir: Path) -> str:
    """experiments/<name>/<condition id>/<run>/: condition.json, result.json, log.txt and what the
    condition wrote to $YARD_OUT under out/; complete, marked ok or failed, keyed by `run_key`."""
    run = RunWriter(store, KIND, f"{spec.experiment}/{spec.condition_id}", new_run_name())
    run.put_json("condition.json", {"experiment": spec.experiment, "condition_id": spec.condition_id,
                                    "condition": spec.condition, "attempt": spec.attempt, "argv": spec.argv,
                                    "function": spec.function, "node": outcome["node"], "gpu_ids": outcome["gpu_ids"],
                                    "outcome": outcome["outcome"], "reason": outcome.get("reason", ""),
                                    "exit_code": outcome.get("exit_code"), "phases": outcome["phases"],
                                    "result_text": outcome["result_text"]})
    if outcome.get("result") is not None:
        run.put_json("result.json", outcome["result"])
    if log_path.exists():
        run.put_file("log.txt", log_path)
    for path in sorted(out_dir.rglob("*")):
        # plain files only: a link could point anywhere on the node, and only $YARD_OUT is the result
        if path.is_file() and not any(p.is_symlink() for p in (path, *path.parents) if out_dir in p.parents or p == path):
            run.put_file(f"out/{path.relative_to(out_dir).as_posix()}", path)
    ok = outcome["outcome"] == "ok"
    run.complete(status="ok" if ok else "failed", run_key=spec.run_key, seconds=outcome["seconds"],
                 outcome=outcome["outcome"])
    return run.prefix
