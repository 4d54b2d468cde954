"""Benchmark: the Serve app's HF engine with dynamic batching vs one request at a time, and a load test.

    .venv/bin/python tests/bench/serve/bench_serve.py                      # CPU, zoo llama-a, 16 clients
    .venv/bin/python tests/bench/serve/bench_serve.py --load               # 200 concurrent, mixed good/bad
    .venv/bin/python tests/bench/serve/bench_serve.py --registry /carried/zoo/models.yaml --device cuda

Throughput mode: the same app started twice on local Ray (one candidate; `max_batch_size` = the
client count, then 1), 16 concurrent clients over real HTTP send `--requests` greedy chat
requests; prints completion tokens/s, p50/p95 latency and the batched/single ratio (goal on GPU:
>= 4x). Load mode, a storm: `--load-requests` (250) at once, a third of them hostile or malformed
(`HOSTILE`: malformed and 5,000-deep JSON, a 2^64 seed, a Jinja template smuggled in
chat_template_kwargs, an unknown role, text/plain, oversized and chunked-oversized bodies, a
foreign Origin, ...) and among the good ones streams read to the end and streams the client leaves
after the first chunk; prints the count per status class, status codes per kind, latency, and the
replicas restarted (replica ids before and after). Every answer must be 200 or 4xx, every stream
read to the end must end with [DONE], and a plain request afterwards must answer 200: exit 1
otherwise. Needs Ray Serve, torch, transformers and httpx.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run as a script from anywhere


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-a", help="registry id of the served model")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (throughput mode)")
    p.add_argument("--requests", type=int, default=64, help="requests per run (throughput mode)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--batch-wait-s", type=float, default=0.05, help="batch_wait_timeout_s of the batched run")
    p.add_argument("--load", action="store_true", help="the load test instead of the throughput comparison")
    p.add_argument("--load-requests", type=int, default=250)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: the candidate takes 1 GPU")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the replica on CPU")
    p.add_argument("--registry", default=None, help="a zoo registry to use as is (a carried zoo on a GPU machine)")
    p.add_argument("--zoo-dir", default=os.environ.get("YARD_TEST_ZOO_DIR", "~/.cache/modelyard/test-zoo"),
                   help="built there on first use when --registry is not given")
    return p.parse_args(argv)


def _registry(args) -> str:
    if args.registry:
        return str(Path(args.registry).expanduser().resolve())
    from cluster.models.zoo import build_zoo, default_zoo_config

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
    from serve.deploy import candidate_info, shutdown, start_app

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


# A storm: of every 15 requests, 10 are good (6 plain, 2 streamed to [DONE], 2 streams the client
# leaves after the first chunk) and 5 hostile or malformed, cycling through HOSTILE.
HOSTILE = ["malformed", "over_max_tokens", "long_prompt", "unknown_model", "deep_json", "huge_seed",
           "template_in_kwargs", "unknown_role", "text_plain", "oversized", "chunked_oversized", "foreign_origin",
           "bad_temperature", "messages_not_list", "empty_body"]
GOOD = ["ok"] * 6 + ["stream"] * 2 + ["stream_leave"] * 2


def _load_request(i: int, model: str, limits_max_tokens: int) -> tuple[str, dict | bytes, dict]:
    """(kind, body, extra headers) of request i."""
    block, pos = divmod(i, 15)
    k = GOOD[pos] if pos < len(GOOD) else HOSTILE[(block * 5 + pos - len(GOOD)) % len(HOSTILE)]
    headers: dict = {}
    body: dict | bytes = {"model": model, "messages": _prompt(i), "max_tokens": 8}
    if k == "malformed":
        body = b'{"model": "' + model.encode() + b'", "messages": [{"role": '
    elif k == "over_max_tokens":
        body["max_tokens"] = limits_max_tokens + 1
    elif k == "long_prompt":
        body["messages"] = [{"role": "user", "content": "rain " * 400}]
    elif k == "unknown_model":
        body["model"] = "no-such-model"
    elif k == "deep_json":
        body = b'{"model": "x", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    elif k == "huge_seed":
        body["seed"] = 18446744073709551616
    elif k == "template_in_kwargs":
        body["chat_template_kwargs"] = {"chat_template": "{% for a in range(10**9) %}{% endfor %}"}
    elif k == "unknown_role":
        body["messages"] = [{"role": "wizard", "content": "hi"}]
    elif k == "text_plain":
        headers["content-type"] = "text/plain"
    elif k == "oversized":
        body["messages"] = [{"role": "user", "content": "x" * 40000}]
    elif k == "chunked_oversized":
        body = b"chunked"
    elif k == "foreign_origin":
        headers["origin"] = "https://evil.example"
    elif k == "bad_temperature":
        body["temperature"] = "hot"
    elif k == "messages_not_list":
        body["messages"] = "hi"
    elif k == "empty_body":
        body = b""
    elif k.startswith("stream"):
        body["stream"] = True
        body["max_tokens"] = 32
    return k, body, headers


async def _load(url: str, model: str, n: int) -> dict:
    import json

    import httpx

    counts: dict[str, int] = {}
    by_kind: dict[str, set] = {}
    unfinished_streams = []
    latencies: list[float] = []

    async def chunked():
        yield b'{"model": "' + model.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 1024
        yield b'"}]}'

    async def one(http, i):
        kind, body, headers = _load_request(i, model, 64)
        target = url + "/v1/chat/completions"
        t0 = time.perf_counter()
        try:
            if kind.startswith("stream"):
                async with http.stream("POST", target, json=body) as r:
                    lines = []
                    async for line in r.aiter_lines():
                        if line:
                            lines.append(line)
                        if kind == "stream_leave" and len(lines) >= 1:
                            break  # the client goes away mid-stream
                    if kind == "stream" and (not lines or lines[-1] != "data: [DONE]"):
                        unfinished_streams.append(i)
            elif body == b"chunked":
                r = await http.post(target, content=chunked(), headers={"content-type": "application/json"})
            elif isinstance(body, bytes):
                r = await http.post(target, content=body, headers={"content-type": "application/json", **headers})
            elif headers.get("content-type") == "text/plain":
                r = await http.post(target, content=json.dumps(body).encode(), headers=headers)
            else:
                r = await http.post(target, json=body, headers=headers)
            cls = f"{r.status_code // 100}xx"
            by_kind.setdefault(kind, set()).add(r.status_code)
        except httpx.HTTPError as exc:
            cls = f"transport:{type(exc).__name__}"
        latencies.append(time.perf_counter() - t0)
        counts[cls] = counts.get(cls, 0) + 1

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=n)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(http, i) for i in range(n)))
        wall = time.perf_counter() - t0
        # afterwards the app answers normally
        after = await http.post(url + "/v1/chat/completions", json={"model": model, "messages": _prompt(0),
                                                                    "max_tokens": 8})
        health = await http.get(url + "/health")
    lat = sorted(latencies)
    return {"counts": counts, "statuses": {k: sorted(v) for k, v in by_kind.items()}, "wall_s": wall,
            "unfinished_streams": unfinished_streams, "after": after.status_code, "health": health.status_code,
            "p50_s": statistics.median(lat), "p95_s": lat[int(0.95 * (len(lat) - 1))]}


def load(args, registry: str) -> int:
    from serve.deploy import candidate_info, shutdown, start_app

    url = start_app(_config(args, registry, 16, args.batch_wait_s))
    before = candidate_info(args.model)["replica_id"]
    result = asyncio.run(_load(url, args.model, args.load_requests))
    info = candidate_info(args.model)
    after = info["replica_id"]
    left = sum(1 for i in range(args.load_requests) if _load_request(i, args.model, 64)[0] == "stream_leave")
    print(f"streams the client left: {left}; cancelled on the replica before their end: {info['streams_cancelled']}")
    shutdown()
    restarts = int(before != after)
    print(f"load: {args.load_requests} concurrent requests in {result['wall_s']:.1f} s")
    print("answers:", ", ".join(f"{k}={v}" for k, v in sorted(result["counts"].items())))
    print("status codes per kind:", result["statuses"])
    print(f"replica restarts: {restarts}; streams without [DONE]: {len(result['unfinished_streams'])}; "
          f"latency p50 {result['p50_s']:.2f} s, p95 {result['p95_s']:.2f} s; "
          f"afterwards: chat {result['after']}, health {result['health']}")
    bad = sum(v for k, v in result["counts"].items() if not k.startswith(("2", "4")))
    return 1 if bad or restarts or result["unfinished_streams"] or result["after"] != 200 else 0


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
