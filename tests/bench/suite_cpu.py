"""Where the test suite's CPU goes: per module and per test, every process a test started included.

    python3 tests/bench/suite_cpu.py                      # runs `make test`, then prints the tables
    python3 tests/bench/suite_cpu.py -- make test PYTEST_ARGS=...   # another command
    python3 tests/bench/suite_cpu.py --report OUT_DIR     # the tables of a run already sampled

`make test` on 2 cores is CPU-bound (3 xdist workers), so wall time per test says little: a test's
seconds stretch with whatever runs beside it. This samples every process's CPU time
(/proc/PID/stat, every 0.5 s) while the command runs, and charges it to the test that its xdist
worker ran at that moment (YARD_TEST_TIMELINE, tests/conftest.py). A process belongs to a worker
through PYTEST_XDIST_WORKER in its environment (Ray's processes and subprocesses inherit it); the
worker processes themselves through their children. `yard zoo build` (the background build of
tests/plugins/zoo.py) and its trainers are a line of their own. A process that lives less than a sample interval is missed:
the totals are a little low, never high.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")


def _read(pid: str) -> tuple[float, int, str] | None:
    """(cpu seconds, ppid, start time) of a process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / HZ, int(rest[1]), rest[19]


def _worker_env(pid: str) -> str:
    try:
        for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if entry.startswith(b"PYTEST_XDIST_WORKER="):
                return entry.split(b"=", 1)[1].decode()
    except OSError:
        pass
    return "-"


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return ""


def sample(out: Path, stop: threading.Event, interval_s: float = 0.5) -> None:
    """Append {t, pid, worker, cmd, cpu} deltas to out/cpu.jsonl until `stop` is set."""
    seen: dict[tuple[str, str], dict] = {}
    zoo: set[int] = set()
    with open(out / "cpu.jsonl", "w") as fh:
        while not stop.is_set():
            now = time.time()
            for pid in filter(str.isdigit, os.listdir("/proc")):
                got = _read(pid)
                if got is None:
                    continue
                cpu, ppid, start = got
                proc = seen.get((pid, start))
                if proc is None:
                    proc = seen[(pid, start)] = {"worker": _worker_env(pid), "ppid": ppid, "cpu": cpu, "cmd": ""}
                    if "zoo build" in _cmdline(pid) or ppid in zoo:  # the background build and its trainers
                        zoo.add(int(pid))
                        proc["worker"] = "zoo"
                proc["cmd"] = _cmdline(pid) or proc["cmd"]
                if cpu > proc["cpu"]:
                    fh.write(json.dumps({"t": now, "pid": int(pid), "ppid": proc["ppid"], "worker": proc["worker"],
                                         "cmd": proc["cmd"][:80], "cpu": round(cpu - proc["cpu"], 3)}) + "\n")
                    proc["cpu"] = cpu
            fh.flush()
            stop.wait(max(0.05, interval_s - (time.time() - now)))


def report(out: Path, top: int = 30) -> None:
    timeline = [json.loads(line) for line in (out / "timeline.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (out / "cpu.jsonl").read_text().splitlines()]
    # an xdist worker process has no PYTEST_XDIST_WORKER in its own environ (execnet sets it later):
    # it is the parent of the processes that do
    parents: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for s in samples:
        if s["worker"].startswith("gw"):
            parents[s["ppid"]][s["worker"]] += 1
    worker_of = {pid: counts.most_common(1)[0][0] for pid, counts in parents.items()}
    runs = collections.defaultdict(list)
    for r in timeline:
        runs[r["worker"]].append(r)
    start, end = min(r["start"] for r in timeline), max(r["end"] for r in timeline)
    by_module: collections.Counter = collections.Counter()
    by_test: collections.Counter = collections.Counter()
    other: collections.Counter = collections.Counter()
    for s in samples:
        if s["t"] < start - 2:
            continue
        worker = s["worker"] if s["worker"].startswith("gw") else worker_of.get(s["pid"], s["worker"])
        if s["worker"] == "zoo":
            other["yard zoo build (background)"] += s["cpu"]
            continue
        test = next((r["test"] for r in runs.get(worker, ()) if r["start"] <= s["t"] <= r["end"] + 0.6), None)
        if test is None:
            other[f"between tests ({worker})" if worker.startswith("gw") else s["cmd"][:50] or "?"] += s["cpu"]
            continue
        by_test[test] += s["cpu"]
        by_module[test.split("::")[0]] += s["cpu"]
    wall: collections.Counter = collections.Counter()
    for r in timeline:
        wall[r["test"].split("::")[0]] += r["end"] - r["start"]
    total = sum(s["cpu"] for s in samples if s["t"] >= start - 2)
    print(f"{end - start:.0f} s of tests, {total:.0f} CPU-s ({total / (end - start):.2f} cores busy on average)")
    print(f"\n{'CPU-s':>8} {'share':>6} {'wall s':>8}  module (wall: its tests' time on their worker)")
    for module, cpu in by_module.most_common(top):
        print(f"{cpu:8.1f} {100 * cpu / total:5.1f}% {wall[module]:8.1f}  {module}")
    print(f"\n{'CPU-s':>8}  outside any test")
    for what, cpu in other.most_common(8):
        print(f"{cpu:8.1f}  {what}")
    print(f"\n{'CPU-s':>8}  test")
    for test, cpu in by_test.most_common(top):
        print(f"{cpu:8.1f}  {test}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="where the samples go (default: a new temp dir)")
    parser.add_argument("--report", type=Path, default=None, help="print the tables of a sampled run and exit")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("command", nargs="*", default=["make", "test"])
    args = parser.parse_args(argv)
    if args.report is not None:
        report(args.report, args.top)
        return 0
    import tempfile

    out = args.out or Path(tempfile.mkdtemp(prefix="suite-cpu-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "timeline.jsonl").unlink(missing_ok=True)
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(out, stop), daemon=True)
    sampler.start()
    env = {**os.environ, "YARD_TEST_TIMELINE": str(out / "timeline.jsonl")}
    proc = subprocess.Popen(args.command, env=env, stdin=subprocess.DEVNULL)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        code = proc.wait()
    stop.set()
    sampler.join()
    print(f"\nsamples in {out}")
    report(out, args.top)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
