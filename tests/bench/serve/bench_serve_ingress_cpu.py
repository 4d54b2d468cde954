"""Benchmark: the CPU a request costs on yard serve's request path, against a bare server doing the same work.

    .venv/bin/python tests/bench/serve/bench_serve_ingress_cpu.py                  # 3 runs, 64 clients
    .venv/bin/python tests/bench/serve/bench_serve_ingress_cpu.py --clients 16 --requests 512

On the GPU, `yard serve` trails vLLM's own server at 64 clients by a few percent, and its HTTP path
trails its own replica's handle (BENCHMARKS.md, "Serve on vLLM through modelyard's ingress"). This
measures what that path costs in CPU, where it runs: on this machine, without vLLM.
- `yard`: `yard serve`'s real ingress, `ingress: colocated` and `ray_serve_mode` direct (or
  `--mode`): HAProxy, Ray Serve's direct-ingress HTTP server in the replica, this project's key,
  body and field checks, the candidate's `prepare` (chat template, tokenizing) and
  `VllmServeEngine.generate`.
- `serve`: the bare route below, as a Ray Serve ingress in the same mode: what Ray Serve's own
  request path adds, without this project's ingress.
- `bare`: one uvicorn + FastAPI process doing the same per-request work: JSON, the same chat
  template and tokenizer (tokenizing in a worker thread), the same engine stand-in, an
  OpenAI-shaped answer. This has the shape of vLLM's own server, without its request models; it
  is a floor, not vLLM's figure.

vLLM runs on CUDA GPUs only, so all three paths use the same stand-in for its `AsyncLLM`: a request
waits `--wait-s` (the generation, no CPU) and gets `--max-tokens` tokens back at once, as
`FINAL_ONLY` gives them. Clients (httpx, in this process) keep `--clients` requests in flight,
`--requests` in all after one untimed wave. The figure is CPU-seconds (user + system, from the
kernel's per-process counters) that the serving processes spent during the timed requests,
divided by the requests: it does not depend on how busy the rest of the machine is. Each run
starts each path in a fresh process; each path goes first in one run. Prints each run, then the
median over runs, serve / bare (Ray Serve's share), yard / serve (this project's) and yard / bare. Needs Ray Serve (ray[serve] brings HAProxy on Linux), httpx,
psutil and transformers.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

KEY = "bench-key"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=2048, help="timed requests per path and run")
    p.add_argument("--wait-s", type=float, default=0.4, help="the stand-in engine's generation time")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--mode", default="direct", choices=["direct", "throughput", "default"],
                   help="yard serve's ray_serve_mode")
    p.add_argument("--model", default="exaone4-c", help="registry id whose tokenizer and chat template are used")
    p.add_argument("--registry", default=None, help="a zoo registry to use as is")
    p.add_argument("--zoo-dir", default=os.environ.get("YARD_TEST_ZOO_DIR", "~/.cache/modelyard/test-zoo"),
                   help="built there on first use when --registry is not given")
    p.add_argument("--child", default=None, choices=["yard", "serve", "bare", "bare-server"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def standin_engine(wait_s: float, max_tokens: int):
    """What `VllmApi.start` returns, for this benchmark: an `AsyncLLM` stand-in (vLLM cannot run here)."""
    import asyncio
    from types import SimpleNamespace

    text = " word" * max_tokens

    class Engine:
        model_config = SimpleNamespace(max_model_len=2048)

        async def generate(self, prompt, params, request_id, lora_request=None):
            await asyncio.sleep(wait_s)
            yield SimpleNamespace(finished=True, outputs=[SimpleNamespace(
                text=text, token_ids=list(range(max_tokens)), finish_reason="length")])

    return Engine()


def bare_app(model_dir: str, wait_s: float, max_tokens: int):
    """The `bare` route (see the module's docstring) as a FastAPI app; the tokenizer loads on the
    first request, in whichever process serves it."""
    import asyncio

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app, state = FastAPI(), {}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if not state:
            from transformers import AutoTokenizer

            state.update(tokenizer=AutoTokenizer.from_pretrained(model_dir), engine=standin_engine(wait_s, max_tokens))
        tokenizer, engine = state["tokenizer"], state["engine"]
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": "key"}, status_code=401)
        body = json.loads(await request.body())
        prompt = tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        ids = await asyncio.to_thread(lambda: tokenizer(prompt, add_special_tokens=False)["input_ids"])
        final = None
        async for out in engine.generate({"prompt_token_ids": ids}, None, "id"):
            final = out
        best = final.outputs[0]
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(best.token_ids),
                 "total_tokens": len(ids) + len(best.token_ids)}
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": best.text},
                             "finish_reason": best.finish_reason, "logprobs": None}], "usage": usage}

    return app


def start_ray_serve(args) -> None:
    """A local Ray with the mode's flags, Serve on the port."""
    from serve.deploy import MODE_ENV

    os.environ.update(MODE_ENV.get(args.mode, {}))
    import ray
    from ray import serve

    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})


def serving_processes(replica_title: str) -> dict[str, int]:
    """The replica's pid and, in direct mode, that of HAProxy's parent (Ray's manager actor)."""
    import psutil

    procs = {}
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        if replica_title in title:
            procs["replica"] = proc.pid
        elif "HAProxyManager" in title:  # HAProxy runs as its child, a new process at each reload
            procs["haproxy"] = proc.pid
    if "replica" not in procs:
        raise RuntimeError(f"no process titled {replica_title} was found")
    return procs


def start_serve_bare(args) -> dict[str, int]:
    """The bare route in a Ray Serve replica: what Ray Serve's request path adds, without this project's ingress."""
    from ray import serve

    start_ray_serve(args)

    @serve.deployment(name="bare", max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
    @serve.ingress(bare_app(args.model_dir, args.wait_s, args.max_tokens))
    class Bare:
        pass

    serve.run(Bare.bind(), name="bare", route_prefix="/")
    return serving_processes("ServeReplica:bare:bare")


def start_yard(args) -> dict[str, int]:
    """yard serve's app with the engine stand-in, on a local Ray with the mode's flags."""
    from ray import serve

    from serve.app import OpenAIIngress
    from serve.config import CandidateConfig, LimitsConfig

    start_ray_serve(args)
    wait_s, max_tokens = args.wait_s, args.max_tokens

    class StandInIngress(OpenAIIngress.func_or_class):
        async def __init__(self, settings, servers):
            import serve.engine_vllm as engine_vllm

            engine_vllm.VllmApi.start = staticmethod(lambda kwargs: standin_engine(wait_s, max_tokens))
            engine_vllm.VllmApi.sampling = staticmethod(lambda kind, **fields: {"kind": kind, **fields})
            await super().__init__(settings, servers)

    cand = CandidateConfig(id="m", path=args.model_dir, engine="vllm", num_gpus=1).model_dump()
    limits = LimitsConfig(max_concurrent_requests=1024).model_dump()
    store = str(Path(os.environ.get("TMPDIR", "/tmp")) / "yard-bench-ingress-cpu")
    settings = {"limits": limits, "api_key": KEY, "candidates": [cand], "vllm_ids": [], "self_url": None,
                "storage_uri": store, "endpoint_url": None, "probe_suite": None,
                "colocated": [cand, [], store, None, limits]}
    # the candidate asks for a GPU (engine: vllm); its stand-in needs none
    ingress = serve.deployment(StandInIngress, name="m", max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
    serve.run(ingress.bind(settings, {}), name="yard", route_prefix="/")
    return serving_processes("ServeReplica:yard:m")


def measure(args, procs: dict[str, int]) -> dict:
    """The untimed wave, then the timed requests: requests/s, p50 beyond the wait, CPU ms per request
    by process. "haproxy" counts the children of HAProxy's parent (Ray's manager actor), not the
    manager: the live ones and those it has reaped (a reload replaces HAProxy's process)."""
    import asyncio

    import httpx
    import psutil

    url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
    body = {"model": "m", "temperature": 0, "max_tokens": args.max_tokens,
            "messages": [{"role": "user", "content": "Tell me about the weather on day 3."}]}
    handles = {name: psutil.Process(pid) for name, pid in procs.items()}

    def children_cpu(parent) -> float:
        reaped = parent.cpu_times()
        total = reaped.children_user + reaped.children_system
        for kid in parent.children(recursive=True):
            try:
                total += sum(kid.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return total

    def cpu() -> dict[str, float]:
        return {name: children_cpu(h) if name == "haproxy" else sum(h.cpu_times()[:2]) for name, h in handles.items()}

    async def run() -> dict:
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
        async with httpx.AsyncClient(timeout=120, limits=limits, headers={"Authorization": f"Bearer {KEY}"}) as http:
            latencies: list[float] = []

            async def one() -> None:
                t0 = time.perf_counter()
                r = await http.post(url, json=body)
                if r.status_code != 200 or r.json()["usage"]["completion_tokens"] != args.max_tokens:
                    raise RuntimeError(f"unexpected answer {r.status_code}: {r.text[:300]}")
                latencies.append(time.perf_counter() - t0)

            for _ in range(200):  # the server is up once it answers
                try:
                    await one()
                    break
                except (httpx.TransportError, RuntimeError):
                    await asyncio.sleep(0.2)
            await asyncio.gather(*(one() for _ in range(args.clients)))  # untimed
            latencies.clear()
            per_client = max(1, args.requests // args.clients)

            async def client() -> None:
                for _ in range(per_client):
                    await one()

            before, t0 = cpu(), time.perf_counter()
            await asyncio.gather(*(client() for _ in range(args.clients)))
            wall, after = time.perf_counter() - t0, cpu()
        n = len(latencies)
        cpu_ms = {name: (after[name] - before[name]) / n * 1e3 for name in procs}
        return {"requests": n, "req_s": n / wall, "p50_added_ms": (statistics.median(latencies) - args.wait_s) * 1e3,
                "cpu_ms": cpu_ms}

    return asyncio.run(run())


def child(args) -> None:
    if args.child == "bare-server":
        import uvicorn

        uvicorn.run(bare_app(args.model_dir, args.wait_s, args.max_tokens), host="127.0.0.1", port=args.port,
                    log_level="warning", access_log=False)
        return
    if args.child == "bare":
        server = subprocess.Popen([sys.executable, __file__, "--child", "bare-server", "--model-dir", args.model_dir,
                                   "--port", str(args.port), "--wait-s", str(args.wait_s),
                                   "--max-tokens", str(args.max_tokens)], cwd=ROOT)
        try:
            result = measure(args, {"server": server.pid})
        finally:
            server.terminate()
            server.wait(timeout=30)
    else:
        from ray import serve

        result = measure(args, (start_yard if args.child == "yard" else start_serve_bare)(args))
        serve.shutdown()
    print("RESULT " + json.dumps(result), flush=True)


def model_dir(args) -> str:
    from cluster.models.registry import ModelRegistry
    from tests.bench.serve.bench_serve import _registry  # --registry, else the zoo in --zoo-dir

    return ModelRegistry.load([_registry(args)]).get(args.model).source


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    from cluster.runtime import free_port

    path = model_dir(args)
    print(f"{args.clients} clients, {args.requests} requests a run, a stand-in generation of {args.wait_s} s and "
          f"{args.max_tokens} tokens; yard's ray_serve_mode {args.mode}; tokenizer and template of {args.model}")
    paths = ["bare", "serve", "yard"]
    results: dict[str, list[dict]] = {name: [] for name in paths}
    for run in range(1, args.runs + 1):
        for path_name in paths[run - 1:] + paths[:run - 1]:  # each path first in turn
            cmd = [sys.executable, __file__, "--child", path_name, "--model-dir", path, "--port", str(free_port()),
                   "--clients", str(args.clients), "--requests", str(args.requests), "--wait-s", str(args.wait_s),
                   "--max-tokens", str(args.max_tokens), "--mode", args.mode]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"run {run} {path_name}: failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")
                return 1
            res = json.loads(line[7:])
            results[path_name].append(res)
            split = ", ".join(f"{k} {v:.3f}" for k, v in res["cpu_ms"].items())
            print(f"run {run} {path_name:5}: {res['req_s']:6.1f} requests/s, p50 {res['p50_added_ms']:5.1f} ms beyond "
                  f"the wait, CPU {sum(res['cpu_ms'].values()):.3f} ms a request ({split})", flush=True)
    print(f"\nmedian of {args.runs} runs: CPU ms a request (by process), p50 ms beyond the wait")
    med = {}
    for name, rs in results.items():
        med[name] = statistics.median(sum(r["cpu_ms"].values()) for r in rs)
        split = ", ".join(f"{k} {statistics.median(r['cpu_ms'][k] for r in rs):.3f}" for k in rs[0]["cpu_ms"])
        print(f"{name:5}  {med[name]:.3f} ({split})  p50 {statistics.median(r['p50_added_ms'] for r in rs):.1f}")
    print(f"serve / bare {med['serve'] / med['bare']:.2f} (Ray Serve's path), yard / serve "
          f"{med['yard'] / med['serve']:.2f} (this project's ingress), yard / bare {med['yard'] / med['bare']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
