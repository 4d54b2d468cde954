"""Benchmark: the Serve app's HF engine with dynamic batching vs one request at a time, and a load test.

    .venv/bin/python tests/bench/bench_serve.py                      # CPU, zoo llama-a, 16 clients
    .venv/bin/python tests/bench/bench_serve.py --load               # 200 concurrent, mixed good/bad
    .venv/bin/python tests/bench/bench_serve.py --registry /carried/zoo/models.yaml --device cuda

Throughput mode: the same app started twice on local Ray (one candidate; `max_batch_size` = the
client count, then 1), 16 concurrent clients over real HTTP send `--requests` greedy chat
requests; prints completion tokens/s, p50/p95 latency and the batched/single ratio (goal on GPU:
>= 4x). Load mode: `--load-requests` at once, some malformed JSON, some over max_tokens or the
prompt limit, some for an unknown model; prints the count per status class and the replicas
restarted (compares replica ids before and after). Every answer must be 200 or 4xx: exit 1 on a
5xx, a transport error or a restart. Needs Ray Serve, torch, transformers and httpx.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-a", help="registry id of the served model")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (throughput mode)")
    p.add_argument("--requests", type=int, default=64, help="requests per run (throughput mode)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--batch-wait-s", type=float, default=0.05, help="batch_wait_timeout_s of the batched run")
    p.add_argument("--load", action="store_true", help="the load test instead of the throughput comparison")
    p.add_argument("--load-requests", type=int, default=200)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: the candidate takes 1 GPU")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the replica on CPU")
    p.add_argument("--registry", default=None, help="a zoo registry to use as is (a carried zoo on a GPU machine)")
    p.add_argument("--zoo-dir", default=os.environ.get("YARD_TEST_ZOO_DIR", "~/.cache/modelyard/test-zoo"),
                   help="built there on first use when --registry is not given")
    return p.parse_args(argv)


def _registry(args) -> str:
    if args.registry:
        return str(Path(args.registry).expanduser().resolve())
    from cluster.zoo import build_zoo, default_zoo_config

    cfg = default_zoo_config().model_copy(update={"zoo_dir": str(Path(args.zoo_dir).expanduser())})
    return str(build_zoo(cfg).registry_path)




def _config(args, registry: str, max_batch_size: int, wait_s: float):
    from cluster.runtime import free_port
    from serve.config import ServeConfig

    return ServeConfig.model_validate({
        "kind": "serve", "registry": [registry], "port": free_port(),
        "limits": {"max_tokens": 64, "max_prompt_tokens": 128, "max_body_bytes": 16384,
                   "max_concurrent_requests": 256},
        "candidates": [{"id": args.model, "model": args.model, "max_batch_size": max_batch_size,
                        "batch_wait_timeout_s": wait_s, "num_cpus": 1 if args.device == "cpu" else 0,
                        "num_gpus": 1 if args.device == "cuda" else 0}]})


def _prompt(i: int) -> list[dict]:
    topics = ["weather", "food", "school", "travel", "nature", "home", "technology", "music"]
    return [{"role": "user", "content": f"Tell me about {topics[i % len(topics)]} on day {i}."}]


async def _run_clients(url: str, model: str, n: int, clients: int, max_tokens: int) -> dict:
    import httpx

    latencies, tokens, queue = [], 0, list(range(n))

    async def client(http):
        nonlocal tokens
        while queue:
            i = queue.pop()
            body = {"model": model, "messages": _prompt(i), "max_tokens": max_tokens, "temperature": 0}
            t0 = time.perf_counter()
            r = await http.post(url + "/v1/chat/completions", json=body)
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600) as http:
        # warm-up, untimed: a full round of concurrent requests, so lazy init and the first batch
        # shapes (CUDA kernel selection, allocator growth) are not charged to the measured run
        await asyncio.gather(*(http.post(url + "/v1/chat/completions", json={
            "model": model, "messages": _prompt(i), "max_tokens": max_tokens, "temperature": 0}) for i in range(clients)))
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "p50_s": statistics.median(lat),
            "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))]}


def throughput(args, registry: str) -> None:
    from serve.app import candidate_info, shutdown, start_app

    results = {}
    for label, mbs, wait in (("batched", args.clients, args.batch_wait_s), ("single", 1, 0.0)):
        url = start_app(_config(args, registry, mbs, wait))
        results[label] = asyncio.run(_run_clients(url, args.model, args.requests, args.clients, args.max_tokens))
        sizes, warm = list(candidate_info(args.model)["batch_sizes"]), 0
        while sizes and warm < args.clients:  # leave out the warm-up round's batches
            warm += sizes.pop(0)
        results[label]["mean_batch"] = sum(sizes) / max(1, len(sizes))
        shutdown()
    print(f"{args.model} on {args.device}, {args.clients} clients, {args.requests} requests, "
          f"max_tokens {args.max_tokens}, greedy")
    print(f"{'mode':8s} {'tokens':>7s} {'wall_s':>8s} {'tok/s':>8s} {'p50_s':>7s} {'p95_s':>7s} {'batch':>6s}")
    for label, r in results.items():
        print(f"{label:8s} {r['tokens']:7d} {r['wall_s']:8.2f} {r['tokens_per_s']:8.1f} {r['p50_s']:7.3f} "
              f"{r['p95_s']:7.3f} {r['mean_batch']:6.1f}")
    b, s = results["batched"], results["single"]
    print(f"ratio batched/single: tokens/s {b['tokens_per_s'] / s['tokens_per_s']:.2f}x, "
          f"p50 latency {b['p50_s'] / s['p50_s']:.2f}x, p95 latency {b['p95_s'] / s['p95_s']:.2f}x")


def _load_request(i: int, model: str, limits_max_tokens: int) -> tuple[str, dict | bytes]:
    kind = ["ok"] * 7 + ["malformed", "over_max_tokens", "long_prompt", "unknown_model"]
    k = kind[i % len(kind)]
    if k == "malformed":
        return k, b'{"model": "' + model.encode() + b'", "messages": [{"role": '
    body = {"model": model, "messages": _prompt(i), "max_tokens": 8}
    if k == "over_max_tokens":
        body["max_tokens"] = limits_max_tokens + 1
    elif k == "long_prompt":
        body["messages"] = [{"role": "user", "content": "rain " * 400}]
    elif k == "unknown_model":
        body["model"] = "no-such-model"
    return k, body


async def _load(url: str, model: str, n: int) -> dict:
    import httpx

    counts: dict[str, int] = {}
    by_kind: dict[str, set] = {}

    async def one(http, i):
        kind, body = _load_request(i, model, 64)
        try:
            if isinstance(body, bytes):
                r = await http.post(url + "/v1/chat/completions", content=body,
                                    headers={"content-type": "application/json"})
            else:
                r = await http.post(url + "/v1/chat/completions", json=body)
            cls = f"{r.status_code // 100}xx"
            by_kind.setdefault(kind, set()).add(r.status_code)
        except httpx.HTTPError as exc:
            cls = f"transport:{type(exc).__name__}"
        counts[cls] = counts.get(cls, 0) + 1

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=n)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(http, i) for i in range(n)))
        wall = time.perf_counter() - t0
    return {"counts": counts, "statuses": {k: sorted(v) for k, v in by_kind.items()}, "wall_s": wall}


def load(args, registry: str) -> int:
    from serve.app import candidate_info, shutdown, start_app

    url = start_app(_config(args, registry, 16, args.batch_wait_s))
    before = candidate_info(args.model)["replica_id"]
    result = asyncio.run(_load(url, args.model, args.load_requests))
    after = candidate_info(args.model)["replica_id"]
    shutdown()
    restarts = int(before != after)
    print(f"load: {args.load_requests} concurrent requests in {result['wall_s']:.1f} s")
    print("answers:", ", ".join(f"{k}={v}" for k, v in sorted(result["counts"].items())))
    print("status codes per kind:", result["statuses"])
    print(f"replica restarts: {restarts}")
    bad = sum(v for k, v in result["counts"].items() if not k.startswith(("2", "4")))
    return 1 if bad or restarts else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    os.environ.setdefault("YARD_DASHBOARD", "0")
    registry = _registry(args)
    ray.init(include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.threads)}} if args.device == "cpu" else None)
    try:
        if args.load:
            return load(args, registry)
        throughput(args, registry)
        return 0
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
