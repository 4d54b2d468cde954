"""Benchmark: a vLLM candidate served through modelyard's own ingress vs vLLM's own OpenAI server.

    python3 tests/bench/bench_serve_vllm.py --registry /tmp/shapes/models.yaml \
        --model exaone-4.0-1.2b-shape --clients 16 64 --requests 256 --max-tokens 128

The same model, the same vLLM engine settings (max_model_len, gpu_memory_utilization), the same
bearer key, the same greedy chat requests (`/v1/chat/completions`, the model's chat template):
first vLLM's own server (`vllm.entrypoints.openai.api_server`) in a process of its own, then
`yard serve` with the candidate at `engine: vllm` (Ray Serve, this project's ingress: key check,
limits, request checks). For each client count: completion tokens/s, p50 / p95 latency, after an
untimed round of concurrent requests; then the ratio yard / vLLM (goal: within 5%). Needs a CUDA
GPU, vLLM, Ray Serve and httpx (the GPU machine: ../shared/device/vllm/ and
tests/bench/device/stage-yard-deps.sh).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

KEY = "bench-key"
GPU_SHARE = 0.8
TOPICS = ["weather", "food", "school", "travel", "nature", "home", "technology", "music"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--registry", required=True, help="models.yaml holding --model (e.g. `yard zoo shape`'s)")
    p.add_argument("--model", required=True)
    p.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    p.add_argument("--requests", type=int, default=256, help="requests per client count")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--parts", default="vllm,yard", help="which servers, in this order")
    p.add_argument("--port", type=int, default=8100)
    return p.parse_args(argv)


def _body(model: str, i: int, max_tokens: int) -> dict:
    return {"model": model, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]} on day {i}."}]}


async def run_clients(url: str, model: str, n: int, clients: int, max_tokens: int) -> dict:
    import httpx

    latencies, tokens, queue = [], 0, list(range(n))
    headers = {"Authorization": f"Bearer {KEY}"}

    async def client(http):
        nonlocal tokens
        while queue:
            i = queue.pop()
            t0 = time.perf_counter()
            r = await http.post(url + "/v1/chat/completions", json=_body(model, i, max_tokens), headers=headers)
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(http.post(url + "/v1/chat/completions", json=_body(model, i, max_tokens),
                                         headers=headers) for i in range(clients)))  # warm-up, untimed
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "p50_s": statistics.median(lat),
            "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))]}


def _wait_health(url: str, proc: subprocess.Popen | None, timeout_s: float = 600) -> None:
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not healthy after {timeout_s:g} s")


def model_dir(registry: str, model: str) -> str:
    from cluster.loading import decide_load, resolve_source
    from cluster.node import node_facts
    from cluster.registry import ModelRegistry

    reg = ModelRegistry.load([registry])
    return resolve_source(decide_load(model, reg.get(model), node_facts()))


def bench_vllm(args, clients: int) -> dict:
    path = model_dir(args.registry, args.model)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--served-model-name",
           args.model, "--port", str(args.port), "--host", "127.0.0.1", "--max-model-len", str(args.max_model_len),
           "--gpu-memory-utilization", str(GPU_SHARE), "--api-key", KEY, "--dtype", "bfloat16"]
    log = open(Path(os.environ.get("OUT", "/tmp")) / "vllm-server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{args.port}"
    try:
        t0 = time.time()
        _wait_health(url, proc)
        print(f"vLLM's server up in {time.time() - t0:.1f} s", flush=True)
        return {c: asyncio.run(run_clients(url, args.model, args.requests, c, args.max_tokens)) for c in clients}
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def bench_yard(args, clients: int) -> dict:
    from serve.config import ServeConfig
    from serve.deploy import shutdown, start_app

    cfg = ServeConfig.model_validate({
        "kind": "serve", "registry": [args.registry], "port": args.port + 1, "api_key": KEY,
        "ray": {"dashboard": False},
        "limits": {"max_tokens": 1024, "max_prompt_tokens": 1024, "max_concurrent_requests": 512},
        "candidates": [{"id": args.model, "model": args.model, "engine": "vllm", "num_gpus": 1, "num_cpus": 1,
                        "dtype": "bfloat16", "max_model_len": args.max_model_len,
                        "engine_kwargs": {"gpu_memory_utilization": GPU_SHARE}}]})
    t0 = time.time()
    url = start_app(cfg)
    print(f"yard serve up in {time.time() - t0:.1f} s", flush=True)
    try:
        return {c: asyncio.run(run_clients(url, args.model, args.requests, c, args.max_tokens)) for c in clients}
    finally:
        shutdown()


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    results = {}
    for part in args.parts.split(","):
        results[part] = (bench_vllm if part == "vllm" else bench_yard)(args, args.clients)
        time.sleep(5)  # the previous server's GPU memory goes back before the next one starts
    print(f"\n{args.model}, {args.requests} greedy chat requests per row, max_tokens {args.max_tokens}")
    print(f"{'server':6s} {'clients':>7s} {'tokens':>7s} {'wall_s':>7s} {'tok/s':>8s} {'p50_s':>6s} {'p95_s':>6s}")
    for part, rows in results.items():
        for c, r in rows.items():
            print(f"{part:6s} {c:7d} {r['tokens']:7d} {r['wall_s']:7.2f} {r['tokens_per_s']:8.1f} {r['p50_s']:6.3f} "
                  f"{r['p95_s']:6.3f}")
    if {"vllm", "yard"} <= set(results):
        for c in args.clients:
            y, v = results["yard"][c], results["vllm"][c]
            print(f"{c} clients: yard/vLLM tokens/s {y['tokens_per_s'] / v['tokens_per_s']:.3f}, "
                  f"p50 {y['p50_s'] / v['p50_s']:.3f}, p95 {y['p95_s'] / v['p95_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
