"""`yard demo`: the toy zoo (built or reused), the chat job, then every capability's demo
(`cluster.capabilities.DEMOS`), each with its report, and a summary of them all.
`yard demo dna serve` runs only the steps named, in the demo's own order."""
from __future__ import annotations

import argparse
import sys
import time

from cluster.capabilities import DEMOS
from cluster.chat import DEFAULT_CHAT_CONFIG, ChatJobConfig, run_chat
from cluster.config import load_config
from cluster.ops.jobs import REPO_ROOT
from cluster.store.storage import open_store

DEFAULT_ZOO_CONFIG = REPO_ROOT / "configs" / "zoo.demo.yaml"
STEPS = ("chat", *DEMOS)


def main(argv: list[str]) -> int:
    """`yard demo`: build or reuse the zoo, then every demo that exists so far."""
    import importlib
    import os

    from cluster.models.zoo import build_zoo

    parser = argparse.ArgumentParser(prog="yard demo", description="the main job on local Ray and the toy zoo")
    parser.add_argument("--store", default=os.environ.get("YARD_STORE"), help="artifact store (default .yard)")
    parser.add_argument("--zoo-dir", default=None, help="where the zoo is built or reused (default: the zoo config's)")
    parser.add_argument("--full", action="store_true", help="full-length capability demos instead of the short ones")
    parser.add_argument("steps", nargs="*", metavar="STEP", help=f"only these steps ({', '.join(STEPS)}; default all)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:  # before the zoo is built or Ray started
        print(f"yard demo: unknown step {unknown[0]!r} (steps: {', '.join(STEPS)})", file=sys.stderr)
        return 2
    wanted = set(args.steps or STEPS)
    t0 = time.time()
    zoo = build_zoo(load_config(DEFAULT_ZOO_CONFIG, overrides=[f"zoo_dir={args.zoo_dir}"] if args.zoo_dir else []))
    how = "cache hit" if zoo.cache_hit else f"built in {zoo.seconds:.0f}s"
    print(f"zoo: {len(zoo.models)} models in {zoo.zoo_dir} ({how})")
    overrides = ["zoo=null", f"registry=[{zoo.registry_path}]"] + ([f"storage.uri={args.store}"] if args.store else [])
    cfg = load_config(DEFAULT_CHAT_CONFIG, ChatJobConfig, overrides)
    steps = []
    if "chat" in wanted:
        started = time.time()
        steps.append(("chat", *run_chat(cfg, str(DEFAULT_CHAT_CONFIG)), time.time() - started))
    store = open_store(cfg.storage.uri, cfg.storage.endpoint_url)
    for name, target in DEMOS.items():
        if name not in wanted:
            continue
        module, _, attr = target.partition(":")
        started = time.time()
        result = getattr(importlib.import_module(module), attr)(store, str(zoo.registry_path), quick=not args.full)
        steps.append((name, 0 if result["status"] == "ok" else 1, result, time.time() - started))
    print("\nyard demo summary")
    for name, code, summary, seconds in steps:
        print(f"  {name:<10} {'ok' if code == 0 else 'FAILED':<7} {seconds:4.0f}s  report: {summary.get('report')}")
    print(f"  total {time.time() - t0:.0f}s; progress and history: yard status --store {store.uri}")
    print(f"  cost, waste and plan vs actual: yard cost --store {store.uri}")
    return 0 if all(code == 0 for _, code, _, _ in steps) else 1
