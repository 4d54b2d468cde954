"""`yard run`'s overhead: a grid of N conditions of S seconds each against a bare `ray.remote` loop
that runs the same subprocesses, on the same local Ray, interleaved (bare, yard, bare, yard, ...).

Each condition is a Python script that sleeps S seconds and prints a JSON line: what a condition costs beyond its own
work is what is measured (process start, output reading, progress records, the store run, the
results table, the job record and ledger). Ray gets `--cpus` logical CPUs (the work is sleep, so
more run at once than there are cores) and each condition takes one.

    python tests/bench/bench_experiment.py                       # 128 x 1 s, 8 at once, 3 rounds
    python tests/bench/bench_experiment.py --conditions 32 --rounds 1

Prints each round's wall times and ratio, then the median ratio (goal: at most 1.10).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


SCRIPT = Path(tempfile.gettempdir()) / "yard-bench-condition.py"


def _argv(seconds: float) -> list[str]:
    """The condition's argv (its script written once, here, before any worker runs it)."""
    path = SCRIPT.with_name(f"yard-bench-condition-{seconds:g}.py")
    path.write_text(f"import json, sys, time\ntime.sleep({seconds})\nprint(json.dumps({{'i': int(sys.argv[1])}}))\n")
    return [sys.executable, str(path)]


def bare(n: int, seconds: float) -> float:
    import ray

    argv = _argv(seconds)

    @ray.remote(num_cpus=1, max_retries=0)
    def condition(i: int) -> str:
        out = subprocess.run([*argv, str(i)], capture_output=True, text=True, check=True)
        return out.stdout.strip().splitlines()[-1]

    t0 = time.perf_counter()
    results = ray.get([condition.remote(i) for i in range(n)])
    assert len(results) == n
    return time.perf_counter() - t0


def yard(n: int, seconds: float, store: Path, round_: int) -> float:
    from cluster.experiment.job import run_experiment

    cfg = {"kind": "experiment", "name": f"overhead-{round_}", "command": [*_argv(seconds), "{i}"],
           "grid": {"i": list(range(n))}, "storage": {"uri": str(store)}, "progress": None}
    t0 = time.perf_counter()
    rows = run_experiment(cfg)
    wall = time.perf_counter() - t0
    assert len(rows) == n and all(r["status"] == "ok" for r in rows), rows[:3]
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conditions", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--cpus", type=int, default=8, help="Ray's logical CPUs (conditions at once)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import contextlib
    import io

    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    bare(args.cpus, 0.0)  # workers started and warm for both
    ratios = []
    print(f"{args.conditions} conditions x {args.seconds:g} s, {args.cpus} at once "
          f"(ideal {args.conditions / args.cpus * args.seconds:.1f} s)")
    print("| round | bare ray.remote s | yard run s | ratio |\n|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            b = bare(args.conditions, args.seconds)
            with contextlib.redirect_stdout(io.StringIO()):  # the job's own table and lines
                y = yard(args.conditions, args.seconds, Path(tmp) / "store", r)
            ratios.append(y / b)
            print(f"| {r + 1} | {b:.2f} | {y:.2f} | {y / b:.3f} |", flush=True)
    print(f"median ratio (yard / bare) over {len(ratios)} rounds: {statistics.median(ratios):.3f}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
