"""The Score of an identity recipe (a plain copy of the base), trials run alone or 4 at a time.

A copy of the base must score 0.5 (PerfNorm 1, SpeedNorm 0). Each trial still times itself while it
evaluates (the figure the sweep used before the timing phase, kept as `score_in_trial`); the
sweep's timing phase then times the base and every copy alone, interleaved and repeated
(`tune/sweep/timing.py`), which gives `score` and its spread. Printed per concurrency: both Scores,
mean / min / max over the copies, and the timing phase's mean ± spread.

    python tests/bench/bench_sweep_timing.py                 # 4 copies, 1 then 4 at a time
    python tests/bench/bench_sweep_timing.py --copies 8 --zoo-dir ~/.cache/modelyard/test-zoo

Not a timed assertion: a table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def identity_sweep(copies: int, at_once: int, store_dir: Path, registry: str) -> list[dict]:
    from cluster.config import load_config
    from cluster.store.storage import open_store
    from tune.config import SweepConfig
    from tune.sweep.sweep import DEMO_CONFIG, run_sweep

    cfg = load_config(DEMO_CONFIG, SweepConfig, [
        "zoo=null", f"registry=[{registry}]", f"storage.uri={store_dir}", f"name=identity-x{at_once}",
        "register_top=0", "search.space.prune_depth={value: 0}", "search.space.kd_samples={value: 0}",
        "search.space.lora_rank={value: 0}", "search.space.quant={value: none}", f"search.num_samples={copies}",
        f"search.max_concurrent_trials={at_once}", "search.asha.enabled=false",
        f"resources.cpus_per_trial={min(1.0, 2.0 / at_once)}"])
    code, summary = run_sweep(cfg, config_path=str(DEMO_CONFIG))
    if code:
        raise SystemExit(f"identity sweep x{at_once} failed: {summary}")
    store = open_store(str(store_dir))
    run = store.runs("sweep", cfg.name)[-1]
    return store.get_json(f"{run.prefix}/rows.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--at-once", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--zoo-dir", default=None, help="where the demo zoo is built or reused (default: .yard/zoo)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    from cluster.models.zoo import build_zoo, default_zoo_config

    registry = str(build_zoo(default_zoo_config([f"zoo_dir={args.zoo_dir}"] if args.zoo_dir else [])).registry_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    lines = ["| trials at once | copies | Score timed in the trial: mean / min / max | Score from the timing "
             "phase: mean / min / max | timing-phase spread (mean ±) |", "|---:|---:|---|---|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for at_once in args.at_once:
            rows = identity_sweep(args.copies, at_once, Path(tmp) / f"x{at_once}", registry)
            old = [r["score_in_trial"] for r in rows]
            new = [r["score"] for r in rows]
            spread = statistics.mean(r["score_spread"] for r in rows)
            lines.append(f"| {at_once} | {len(rows)} | {statistics.mean(old):.3f} / {min(old):.3f} / {max(old):.3f} "
                         f"| {statistics.mean(new):.3f} / {min(new):.3f} / {max(new):.3f} | {spread:.3f} |")
    ray.shutdown()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
