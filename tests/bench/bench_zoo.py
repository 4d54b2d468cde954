"""Benchmark: building the demo toy zoo cold vs a cache hit, and per-model training rate.

    .venv/bin/python tests/bench/bench_zoo.py

Builds configs/zoo.demo.yaml into a fresh temporary directory (cold), builds it again (cache hit)
and prints both times, the ratio, and seconds per model.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    from cluster.models.zoo import build_zoo, default_zoo_config  # torch: after --help, not before

    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as tmp:
        cfg = default_zoo_config([f"zoo_dir={tmp}"])
        t0 = time.perf_counter()
        cold = build_zoo(cfg)
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = build_zoo(cfg)
        warm_s = time.perf_counter() - t0
    assert not cold.cache_hit and warm.cache_hit
    n = len(cold.models)
    print(f"demo zoo: {n} models ({len(cfg.bases)} bases, {len(cfg.children)} children)")
    print(f"{'build':<12}{'seconds':>10}{'s/model':>10}")
    print(f"{'cold':<12}{cold_s:>10.1f}{cold_s / n:>10.2f}")
    print(f"{'cache hit':<12}{warm_s:>10.3f}{warm_s / n:>10.4f}")
    print(f"cold / cache-hit ratio: {cold_s / warm_s:,.0f}x")


if __name__ == "__main__":
    main()
