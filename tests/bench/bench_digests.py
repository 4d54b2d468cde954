"""What identifying models costs before a DNA job starts: the sha256 of their weights (the reuse
keys of `yard dna`), read one model after another, side by side in threads, and from the digest
file a previous process left (`cluster.models.content.digest_cache_path`). Each way runs in a fresh
process, so no in-memory memo helps; the page cache is warm for all (read once first).

    python3 tests/bench/bench_digests.py /tmp/shapes0/qwen17-s0 /tmp/shapes1/llama8-s0 ...
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAY = r"""
import os, sys, time
from concurrent.futures import ThreadPoolExecutor
from cluster.models.content import dir_sha256
dirs, threads = sys.argv[2:], int(sys.argv[1])
t0 = time.perf_counter()
with ThreadPoolExecutor(max_workers=threads) as pool:
    list(pool.map(dir_sha256, dirs))
print(time.perf_counter() - t0)
"""


def run_way(dirs: list[str], threads: int, cache: str) -> float:
    env = {**os.environ, "YARD_DIGEST_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", WAY, str(threads), *dirs], env=env, capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description="sha256 of model folders: one by one, in threads, from the digest file")
    parser.add_argument("dirs", nargs="+", help="model folders")
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()
    size = sum(f.stat().st_size for d in args.dirs for f in Path(d).iterdir() if f.is_file())
    for d in args.dirs:  # warm the page cache: every way reads from memory
        for f in Path(d).iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    while fh.read(64 << 20):
                        pass
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "digests.jsonl")
        one = run_way(args.dirs, 1, "")
        many = run_way(args.dirs, args.threads, "")
        fill = run_way(args.dirs, args.threads, cache)
        reuse = run_way(args.dirs, args.threads, cache)
    print(f"{len(args.dirs)} models, {size / 1e9:.1f} GB, {args.threads} threads")
    print(f"one by one {one:.1f} s ({size / 1e9 / one:.2f} GB/s) | threads {many:.1f} s ({one / many:.1f}x) | "
          f"threads, writing the digest file {fill:.1f} s | next process, from the file {reuse:.3f} s ({one / reuse:.0f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
