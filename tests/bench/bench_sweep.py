"""Sweep benchmark: teacher forward passes per sweep, and trials per hour packed vs one per device.

    python tests/bench/bench_sweep.py                          # CPU: 1 CPU/trial x 2 vs 2 CPUs/trial x 1
    python tests/bench/bench_sweep.py --gpu-fractions 1 0.25   # GPU: one trial per GPU vs four per GPU
    python tests/bench/bench_sweep.py --registry .devzoo/models.yaml --trials 8

Each variant runs the same grid (prune depth x quant none) on the same base with a fresh store,
so the first variant's prepare step pays the teacher passes and the baseline and so does the
second: the comparison is like for like. Prints teacher passes against the naive trials x
kd_samples, and the trials/hour ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def run(registry: str, store: Path, trials: int, kd: int, cpus: float, gpus: float, concurrent: int,
        quant: list[str]) -> dict:
    from cluster.config import load_config
    from tune.config import SweepConfig
    from tune.sweep.sweep import run_sweep

    depths = list(range(trials))
    overrides = [
        "zoo=null", f"registry=[{registry}]", f"storage.uri={store}", "name=bench", "register_top=0",
        f"search.space.prune_depth={{grid: {depths}}}", f"search.space.kd_samples={{value: {kd}}}",
        "search.space.lora_rank={value: 4}", f"search.space.quant={{grid: [{', '.join(quant)}]}}", "search.asha.enabled=false",
        f"search.max_concurrent_trials={concurrent}", f"resources.cpus_per_trial={cpus}",
        f"resources.gpus_per_trial={gpus}",
    ]
    cfg = load_config(REPO / "configs" / "sweep.demo.yaml", SweepConfig, overrides)
    t0 = time.perf_counter()
    code, summary = run_sweep(cfg, config_path=str(REPO / "configs" / "sweep.demo.yaml"))
    wall = time.perf_counter() - t0
    # trials/hour over the trial phase only: prepare (teacher, baseline) is paid once either way
    return {"code": code, "wall_s": round(wall, 1), "trials": summary["trials"], "ok": summary["ok"],
            "teacher_forward_passes": summary["teacher_forward_passes"], "sweep_s": summary["seconds"],
            "trials_per_hour": summary["trials_per_hour"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default=None, help="zoo models.yaml (default: build/reuse the demo zoo)")
    parser.add_argument("--trials", type=int, default=4, help="grid size (prune depth 0..trials-1), <= 5")
    parser.add_argument("--kd", type=int, default=32)
    parser.add_argument("--gpu-fractions", type=float, nargs="*", default=None)
    parser.add_argument("--quant", nargs="+", default=["none"], help="quant schemes crossed with the depths")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    import ray

    from cluster.models.zoo import build_zoo, default_zoo_config

    registry = args.registry or str(build_zoo(default_zoo_config()).registry_path)
    results = {}
    if args.gpu_fractions:
        import torch

        ray.init(num_cpus=max(8, len(args.gpu_fractions)), num_gpus=torch.cuda.device_count(), include_dashboard=False)
        for frac in args.gpu_fractions:
            with tempfile.TemporaryDirectory() as tmp:
                per_gpu = int(round(1 / frac)) if frac < 1 else 1
                results[f"gpu {frac}/trial ({per_gpu} per GPU)"] = run(
                    registry, Path(tmp), args.trials, args.kd, cpus=1, gpus=frac, concurrent=per_gpu * torch.cuda.device_count(),
                    quant=args.quant)
    else:
        ray.init(num_cpus=2, include_dashboard=False)
        for label, cpus, conc in (("2 CPUs x 1 trial", 2, 1), ("1 CPU x 2 trials", 1, 2)):
            with tempfile.TemporaryDirectory() as tmp:
                results[label] = run(registry, Path(tmp), args.trials, args.kd, cpus=cpus, gpus=0, concurrent=conc,
                                    quant=args.quant)
    print("\nvariant | trials ok | teacher passes (naive trials x kd) | sweep s | trials/hour")
    for label, r in results.items():
        print(f"{label} | {r['ok']}/{r['trials']} | {r['teacher_forward_passes']} ({r['trials'] * args.kd}) | "
              f"{r['sweep_s']} | {r['trials_per_hour']}")
    first, last = list(results.values())[0], list(results.values())[-1]
    print(f"trials/hour ratio last/first: {last['trials_per_hour'] / first['trials_per_hour']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
