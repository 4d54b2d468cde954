"""Benchmark: a vLLM candidate served through modelyard's own ingress vs vLLM's own OpenAI server.

    python3 tests/bench/serve/bench_serve_vllm.py --registry /tmp/shapes/models.yaml \
        --model exaone-4.0-1.2b-shape --clients 16 64 --requests 512 --max-tokens 128 --rounds 2

The same model, the same vLLM engine settings (max_model_len, gpu_memory_utilization, vLLM's
OpenAI-server defaults), the same bearer key and greedy chat requests, through four paths that
are all up at once on one GPU (each holds `--share` of its memory), so every row is measured
under the same conditions and the rows of one round are taken back to back:
- `vllm`: vLLM's own server (`vllm.entrypoints.openai.api_server`, a process of its own), HTTP;
- `yard`: `yard serve` with the candidate at `engine: vllm` (Ray Serve proxy, this project's
  ingress with its key check, limits and request checks, the engine: `--ingress auto`, the default,
  holds it in the ingress's replica; `separate` in a replica of its own, one more hop), HTTP;
- `handle`: the candidate's deployment called through its Ray Serve handle (`complete`), no HTTP
  and no request checks: what Ray Serve's replica hop costs;
- `engine`: the candidate's engine (`VllmServeEngine`: template, tokenizer, `AsyncLLM`) in this
  process, no Ray: the floor of modelyard's path.
For each client count: completion tokens/s (median over rounds), p50 / p95 latency (all rounds),
after an untimed round of concurrent requests; then each path over vLLM's own server (goal for
`yard`: within 5%). Needs a CUDA GPU, vLLM, Ray Serve and httpx (the GPU machine:
../shared/device/vllm/ and tests/bench/device/stage-yard-deps.sh).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run as a script from anywhere

KEY = "bench-key"
TOPICS = ["weather", "food", "school", "travel", "nature", "home", "technology", "music"]
PARTS = ("vllm", "yard", "handle", "engine")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--registry", required=True, help="models.yaml holding --model (e.g. `yard zoo shape`'s)")
    p.add_argument("--model", required=True)
    p.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    p.add_argument("--requests", type=int, default=512, help="requests per row")
    p.add_argument("--per-client", type=int, default=None,
                   help="requests per row per client instead (32: 512 at 16 clients, 2048 at 64): rounds as long "
                   "per request in flight, where a fixed count made the 64-client rounds 3-4 s, a request's p95 a "
                   "fifth of that")
    p.add_argument("--rounds", type=int, default=2, help="rounds of all rows, interleaved")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--parts", default=",".join(PARTS), help=f"which paths, of {', '.join(PARTS)}")
    p.add_argument("--share", type=float, default=0.25, help="GPU memory share of each engine")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--ray-serve-mode", default="auto", choices=["auto", "direct", "throughput", "default"],
                   help="yard serve's ray_serve_mode (Ray Serve's request-path flags; direct: HAProxy in front of "
                   "the ingress replica's own HTTP server, no proxy actor)")
    p.add_argument("--ingress", default="auto", choices=["auto", "colocated", "separate"],
                   help="yard serve's ingress: the engine in the ingress's replica (auto, for one vLLM candidate) "
                   "or in a replica of its own (one more Ray hop a request)")
    p.add_argument("--eager", action="store_true", help="both engines with enforce_eager (no compile, no CUDA graphs)")
    p.add_argument("--num-gpus", type=int, default=1, help="GPUs per engine: vLLM's tensor_parallel_size, the "
                   "candidate's num_gpus")
    args = p.parse_args(argv)
    args.parts = [x for x in args.parts.split(",") if x]
    if not args.parts or not set(args.parts) <= set(PARTS):
        p.error(f"--parts: choose from {', '.join(PARTS)}")
    return args


def messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]} on day {i}."}]


def _body(model: str, i: int, max_tokens: int) -> dict:
    return {"model": model, "temperature": 0, "max_tokens": max_tokens, "messages": messages(i)}


async def run_clients(call, n: int, clients: int) -> dict:
    """`clients` workers calling `call(i)` (-> completion tokens) until `n` requests are done,
    after an untimed round of `clients` concurrent calls."""
    latencies, tokens, queue = [], 0, list(range(n))

    async def client():
        nonlocal tokens
        while queue:
            i = queue.pop()
            t0 = time.perf_counter()
            n = await call(i)  # not `tokens += await ...`: that reads `tokens` before the await
            latencies.append(time.perf_counter() - t0)
            tokens += n

    await asyncio.gather(*(call(i) for i in range(clients)))  # warm-up, untimed
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "latencies": latencies}


async def fixed_cost(http, url: str, n: int = 200) -> float:
    """Median seconds of one `GET /health` at a time: what the HTTP path costs a request by itself."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        (await http.get(url + "/health")).raise_for_status()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def http_caller(http, url: str, model: str, max_tokens: int):
    headers = {"Authorization": f"Bearer {KEY}"}

    async def call(i: int) -> int:
        r = await http.post(url + "/v1/chat/completions", json=_body(model, i, max_tokens), headers=headers)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    return call


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
    from cluster.models.loading import decide_load, resolve_source
    from cluster.models.registry import ModelRegistry
    from cluster.node import node_facts

    reg = ModelRegistry.load([registry])
    return resolve_source(decide_load(model, reg.get(model), node_facts()))


def start_vllm_server(args, path: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--served-model-name",
           args.model, "--port", str(args.port), "--host", "127.0.0.1", "--max-model-len", str(args.max_model_len),
           "--gpu-memory-utilization", str(args.share), "--api-key", KEY, "--dtype", "bfloat16",
           "--disable-log-stats", "--tensor-parallel-size", str(args.num_gpus)] + (["--enforce-eager"] if args.eager else [])
    log = open(Path(os.environ.get("OUT", "/tmp")) / "vllm-server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.time()
    _wait_health(f"http://127.0.0.1:{args.port}", proc)
    print(f"vLLM's server up in {time.time() - t0:.1f} s", flush=True)
    return proc


def stop_process(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


def candidate(args) -> dict:
    return {"id": args.model, "model": args.model, "engine": "vllm", "num_gpus": args.num_gpus, "num_cpus": 1,
            "dtype": "bfloat16", "max_model_len": args.max_model_len,
            "engine_kwargs": {"gpu_memory_utilization": args.share, **({"enforce_eager": True} if args.eager else {})}}


LIMITS = {"max_tokens": 1024, "max_prompt_tokens": 1024, "max_concurrent_requests": 512}


def start_yard(args) -> str:
    from serve.config import ServeConfig
    from serve.deploy import start_app

    cfg = ServeConfig.model_validate({"kind": "serve", "registry": [args.registry], "port": args.port + 1,
                                      "api_key": KEY, "ray": {"dashboard": False}, "limits": LIMITS,
                                      "ray_serve_mode": args.ray_serve_mode, "ingress": args.ingress,
                                      "candidates": [candidate(args)]})
    t0 = time.time()
    url = start_app(cfg)
    print(f"yard serve up in {time.time() - t0:.1f} s", flush=True)
    return url


def handle_caller(args):
    from ray import serve

    from serve.app import APP_NAME
    from serve.config import LimitsConfig
    from serve.deploy import deployment_name
    from serve.requests import parse_chat

    handle, limits = serve.get_deployment_handle(deployment_name(args.model), APP_NAME), LimitsConfig(**LIMITS)

    async def call(i: int) -> int:
        payload = {**parse_chat(_body(args.model, i, args.max_tokens), limits), "adapter": None}
        result = await handle.complete.remote(payload)
        if "error" in result:
            raise RuntimeError(result["error"])
        return result["completion_tokens"]

    return call


def start_engine(args):
    from cluster.models.registry import ModelRegistry
    from serve.config import CandidateConfig
    from serve.engine_vllm import VllmServeEngine

    t0 = time.time()
    engine = VllmServeEngine(CandidateConfig.model_validate(candidate(args)), ModelRegistry.load([args.registry]))
    print(f"engine up in {time.time() - t0:.1f} s", flush=True)
    return engine


def engine_caller(engine, max_tokens: int):
    from serve.engine_hf import GenRequest

    async def call(i: int) -> int:
        req = GenRequest(prompt=engine.render_chat(messages(i)), max_tokens=max_tokens, temperature=0)
        return (await engine.generate(req)).completion_tokens

    return call


async def run(args) -> dict:
    import httpx

    procs, engine, callers, urls = [], None, {}, {}
    limits = httpx.Limits(max_connections=max(args.clients) + 8, max_keepalive_connections=max(args.clients) + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        try:
            if "vllm" in args.parts:
                procs.append(start_vllm_server(args, model_dir(args.registry, args.model)))
                urls["vllm"] = f"http://127.0.0.1:{args.port}"
                callers["vllm"] = http_caller(http, urls["vllm"], args.model, args.max_tokens)
            if {"yard", "handle"} & set(args.parts):
                urls["yard"] = start_yard(args)
                callers["yard"] = http_caller(http, urls["yard"], args.model, args.max_tokens)
                callers["handle"] = handle_caller(args)
            if "engine" in args.parts:
                engine = start_engine(args)
                callers["engine"] = engine_caller(engine, args.max_tokens)
            for part, url in urls.items():
                print(f"{part}: GET /health alone, median {1000 * await fixed_cost(http, url):.2f} ms", flush=True)
            rows: dict = {}
            for rnd in range(args.rounds):
                for c in args.clients:
                    order = args.parts if rnd % 2 == 0 else args.parts[::-1]  # neither path always goes first
                    for part in order:
                        r = await run_clients(callers[part], requests_per_row(args, c), c)
                        rows.setdefault((part, c), []).append(r)
                        print(f"round {rnd + 1} {part:6s} {c:3d} clients: {r['tokens']} tokens in {r['wall_s']:.2f} s, "
                              f"{r['tokens_per_s']:8.1f} tok/s", flush=True)
            return rows
        finally:
            if engine is not None:
                engine.close()
            if {"yard", "handle"} & set(args.parts):
                from serve.deploy import shutdown

                shutdown()
            for proc in procs:
                stop_process(proc)


def requests_per_row(args: argparse.Namespace, clients: int) -> int:
    return args.per_client * clients if args.per_client else args.requests


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    rows = asyncio.run(run(args))
    per_row = f"{args.per_client} per client" if args.per_client else args.requests
    print(f"\n{args.model}, {per_row} greedy chat requests per row, max_tokens {args.max_tokens}, "
          f"{args.rounds} rounds, {args.num_gpus} GPU(s) per engine, "
          f"yard's ray_serve_mode {args.ray_serve_mode}, ingress {args.ingress}")
    print(f"{'path':6s} {'clients':>7s} {'tok/s':>8s} {'p50_s':>6s} {'p95_s':>6s}  tok/s of each round")
    summary = {}
    for (part, c), runs in rows.items():
        lat = sorted(x for r in runs for x in r["latencies"])
        summary[part, c] = (statistics.median(r["tokens_per_s"] for r in runs), statistics.median(lat),
                            lat[min(len(lat) - 1, int(0.95 * len(lat)))])
        tps, p50, p95 = summary[part, c]
        print(f"{part:6s} {c:7d} {tps:8.1f} {p50:6.3f} {p95:6.3f}  "
              + " ".join(f"{r['tokens_per_s']:.0f}" for r in runs))
    if "vllm" in args.parts:
        for c in args.clients:
            v = summary["vllm", c]
            for part in args.parts:
                if part != "vllm":
                    y = summary[part, c]
                    print(f"{c} clients: {part}/vLLM tokens/s {y[0] / v[0]:.3f}, p50 {y[1] / v[1]:.3f}, "
                          f"p95 {y[2] / v[2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
