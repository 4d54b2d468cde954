"""`yard cost [JOB...] [--store S] [--prices FILE] [--market M] [--out DIR]`: what the store's jobs
cost, what of it was wasted, and each job's plan beside what it did.

    yard cost                                  # every job with a ledger: markdown on stdout
    yard cost dna --out cost/                  # the DNA jobs; cost.md, cost_*.csv, cost.png in cost/
    yard cost dna-20260501-101500-ab12cd --prices my-prices.yaml --market spot

JOB is a job id, the start of one, or a job name (dna, sweep, persona, serve). Exit 2 for a bad
price table (one line naming the file and field) or when no job matches.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from cluster.config import UserError


def main(argv: list[str] | None = None) -> int:
    from cluster.capacity.cost import read_jobs
    from cluster.capacity.cost_report import render_markdown, write_outputs
    from cluster.capacity.prices import MARKETS, load_prices
    from cluster.store.storage import open_store

    parser = argparse.ArgumentParser(prog="yard cost", description="cost, waste and plan vs actual of recorded jobs")
    parser.add_argument("jobs", nargs="*", metavar="JOB", help="job ids, id prefixes or job names (default: all)")
    parser.add_argument("--store", default=os.environ.get("YARD_STORE", ".yard"), help="store URI (default: $YARD_STORE or .yard)")
    parser.add_argument("--endpoint-url", help="S3 endpoint (MinIO and other S3-compatible stores)")
    parser.add_argument("--prices", metavar="FILE", help="price table (kind: prices; default: configs/prices.yaml)")
    parser.add_argument("--market", choices=MARKETS, help="price every entry at this market (default: each job's own)")
    parser.add_argument("--out", metavar="DIR", help="also write cost.md, cost_jobs.csv, cost_models.csv, cost.png here")
    args = parser.parse_args(argv)

    table = load_prices(args.prices)  # before the store: a bad table is one line, exit 2
    store = open_store(args.store, args.endpoint_url)
    jobs = read_jobs(store, args.jobs or None)
    if not jobs:
        what = f"matching {' '.join(args.jobs)} " if args.jobs else ""
        raise UserError(f"no job {what}with a ledger in {store.uri}")
    print(render_markdown(jobs, table, args.market, title=f"yard cost: {store.uri}"), end="")
    if args.out:
        for path in write_outputs(jobs, table, Path(args.out), args.market, title=f"yard cost: {store.uri}").values():
            print(f"wrote {path}")
    return 0
