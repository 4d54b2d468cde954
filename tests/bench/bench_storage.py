"""Benchmark: LocalStore vs S3Store (moto's server over loopback HTTP), and single PUT vs multipart.

    .venv/bin/python tests/bench/bench_storage.py

Prints MB/s per artifact size and the S3-over-loopback / local ratio. The S3 numbers measure
the client path (boto3, HTTP, the store's code) against an in-memory server, not AWS: read them
as overhead relative to local disk, not as what a real bucket gives.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from cluster.store.storage_local import LocalStore  # noqa: E402
from cluster.store.storage_s3 import MIB, S3Store  # noqa: E402
from tests.plugins.s3 import create_bucket, moto_s3_server  # noqa: E402

KIB = 1024
# (bytes per artifact, how many): small records, typical responses/fingerprints, model shards
SIZES = [(4 * KIB, 200), (1 * MIB, 32), (16 * MIB, 4)]
LARGE_FILE_BYTES = 64 * MIB
MULTIPART_THRESHOLD_BYTES = 8 * MIB


def mb_per_sec(nbytes: int, seconds: float) -> float:
    return nbytes / 1e6 / seconds


def time_write_read(store, size: int, count: int) -> tuple[float, float]:
    """(write MB/s, read MB/s) for `count` artifacts of `size` bytes under a fresh prefix."""
    data = os.urandom(size)
    base = f"bench/{secrets.token_hex(4)}"
    start = time.perf_counter()
    for i in range(count):
        store.put_bytes(f"{base}/a{i:04d}.bin", data)
    write_sec = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(count):
        assert len(store.get_bytes(f"{base}/a{i:04d}.bin")) == size
    read_sec = time.perf_counter() - start
    return mb_per_sec(size * count, write_sec), mb_per_sec(size * count, read_sec)


def time_put_file(store, path: Path) -> float:
    start = time.perf_counter()
    store.put_file(f"bench/large-{secrets.token_hex(4)}.bin", path)
    return mb_per_sec(path.stat().st_size, time.perf_counter() - start)


def size_label(nbytes: int) -> str:
    return f"{nbytes // MIB} MiB" if nbytes >= MIB else f"{nbytes // KIB} KiB"


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp, moto_s3_server() as endpoint_url:
        local = LocalStore(Path(tmp) / "yard")
        uri = f"s3://{create_bucket(endpoint_url)}/bench"
        s3 = S3Store(uri, endpoint_url=endpoint_url)
        time_write_read(local, 4 * KIB, 5)  # warm up: first requests pay for connection setup
        time_write_read(s3, 4 * KIB, 5)

        print(f"artifact store throughput, MB/s (local: {tmp}; s3: moto over loopback, {endpoint_url})")
        write_cols = f"{'local wr':>9} {'s3 wr':>8} {'s3/local':>8}"
        read_cols = f"{'local rd':>9} {'s3 rd':>8} {'s3/local':>8}"
        header = f"{'size':>8} {'count':>5} | {write_cols} | {read_cols}"
        print(header)
        print("-" * len(header))
        for size, count in SIZES:
            local_wr, local_rd = time_write_read(local, size, count)
            s3_wr, s3_rd = time_write_read(s3, size, count)
            print(
                f"{size_label(size):>8} {count:>5} | {local_wr:9.1f} {s3_wr:8.1f} {s3_wr / local_wr:8.3g}"
                f" | {local_rd:9.1f} {s3_rd:8.1f} {s3_rd / local_rd:8.3g}"
            )

        big = Path(tmp) / "large.bin"
        big.write_bytes(os.urandom(LARGE_FILE_BYTES))
        single = S3Store(uri, endpoint_url=endpoint_url, multipart_threshold_bytes=2 * LARGE_FILE_BYTES)
        multi = S3Store(uri, endpoint_url=endpoint_url, multipart_threshold_bytes=MULTIPART_THRESHOLD_BYTES)
        local_mbs = time_put_file(local, big)
        single_mbs = time_put_file(single, big)
        multi_mbs = time_put_file(multi, big)
        parts = -(-LARGE_FILE_BYTES // MULTIPART_THRESHOLD_BYTES)
        print()
        print(f"put_file of one {size_label(LARGE_FILE_BYTES)} file, MB/s")
        print(f"  local copy + rename      {local_mbs:8.1f}")
        print(f"  s3 single PUT            {single_mbs:8.1f}")
        label = f"s3 multipart ({parts} x {size_label(MULTIPART_THRESHOLD_BYTES)})"
        print(f"  {label:<24} {multi_mbs:8.1f}   multipart/single {multi_mbs / single_mbs:.3g}")


if __name__ == "__main__":
    main()
