"""Benchmark: what Ray Serve's HTTP path adds to a request, through the proxy actor and through HAProxy.

    .venv/bin/python tests/bench/serve/bench_serve_http_path.py                       # 3 runs of each mode
    .venv/bin/python tests/bench/serve/bench_serve_http_path.py --modes throughput direct --clients 16 64

A FastAPI ingress whose route waits `--wait-s` (a stand-in for a model's generation: no CPU, so
what is measured is the request path alone) runs on a local Ray started by a child process per run
and mode, with the flags `yard serve`'s `ray_serve_mode` sets (serve/deploy.py: MODE_ENV). For each
client count, the same requests go through HTTP and through a deployment handle (no HTTP); each
latency minus the wait is what the path added. The modes alternate run by
run. Prints per run, then the median over runs of the p50 added by HTTP, and direct's over
throughput's. Needs Ray Serve (ray[serve] brings HAProxy on Linux) and httpx.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", default=["throughput", "direct"], choices=["throughput", "direct", "default"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--per-client", type=int, default=8, help="requests each client sends one after another")
    p.add_argument("--wait-s", type=float, default=0.4)
    p.add_argument("--port", type=int, default=8131)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args) -> None:
    """One mode, one run: a local Ray with the mode's flags, then the measurements as one JSON line."""
    import asyncio
    import os
    import time

    from serve.deploy import MODE_ENV

    os.environ.update(MODE_ENV.get(args.child, {}))
    import httpx
    import ray
    from fastapi import FastAPI
    from ray import serve

    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    app = FastAPI()
    wait = args.wait_s

    @serve.deployment(max_ongoing_requests=1024)
    @serve.ingress(app)
    class Ingress:
        @app.post("/v1/chat/completions")
        async def chat(self, body: dict):
            await asyncio.sleep(wait)
            return {"object": "chat.completion", "n": len(body.get("messages", []))}

        async def complete(self, payload: dict) -> dict:
            await asyncio.sleep(wait)
            return {"n": len(payload.get("messages", []))}

    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(Ingress.bind(), name="path", route_prefix="/")
    handle = serve.get_deployment_handle("Ingress", "path")
    body = {"model": "m", "messages": [{"role": "user", "content": "Tell me about the weather on day 3."}]}

    async def measure() -> dict:
        out = {}
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1024,
                                                                      max_keepalive_connections=1024)) as http:
            async def via_http():
                r = await http.post(f"http://127.0.0.1:{args.port}/v1/chat/completions", json=body)
                r.raise_for_status()
                if r.json().get("n") != 1:  # answered by the route, not by whatever sits in front
                    raise RuntimeError(f"unexpected answer: {r.text[:200]}")

            async def via_handle():
                await handle.complete.remote(body)

            for clients in args.clients:
                for name, call in (("http", via_http), ("handle", via_handle)):
                    await asyncio.gather(*(call() for _ in range(clients)))  # warm-up, untimed
                    added = []

                    async def client():
                        for _ in range(args.per_client):
                            t0 = time.perf_counter()
                            await call()
                            added.append((time.perf_counter() - t0 - wait) * 1e3)

                    await asyncio.gather(*(client() for _ in range(clients)))
                    out[f"{name}@{clients}"] = round(statistics.median(added), 2)
        return out

    result = asyncio.run(measure())
    serve.shutdown()
    ray.shutdown()
    print("RESULT " + json.dumps(result), flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    results: dict[str, list[dict]] = {m: [] for m in args.modes}
    for run in range(1, args.runs + 1):
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--child", mode, "--clients", *map(str, args.clients),
                   "--per-client", str(args.per_client), "--wait-s", str(args.wait_s), "--port", str(args.port)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"run {run} {mode}: failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
                return 1
            results[mode].append(json.loads(line[7:]))
            cells = "  ".join(f"{c} clients: http +{results[mode][-1][f'http@{c}']:.1f} ms, "
                              f"handle +{results[mode][-1][f'handle@{c}']:.1f} ms" for c in args.clients)
            print(f"run {run} {mode:<10} {cells}", flush=True)
    print(f"\nmedian over {args.runs} runs of the p50 ms a request spent beyond the route's {args.wait_s:g} s wait:")
    print(f"{'mode':<11}" + "".join(f"{f'http@{c}':>11}{f'handle@{c}':>12}" for c in args.clients))
    med = {m: {k: statistics.median(r[k] for r in results[m]) for k in results[m][0]} for m in args.modes}
    for mode in args.modes:
        print(f"{mode:<11}" + "".join(f"{med[mode][f'http@{c}']:>11.1f}{med[mode][f'handle@{c}']:>12.1f}"
                                      for c in args.clients))
    if {"throughput", "direct"} <= set(args.modes):
        for c in args.clients:
            t, d = med["throughput"][f"http@{c}"], med["direct"][f"http@{c}"]
            print(f"{c} clients: HTTP adds {d:.1f} ms direct against {t:.1f} ms through the proxy "
                  f"({t / d if d > 0 else float('inf'):.1f}x less)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
