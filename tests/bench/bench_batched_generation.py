"""Benchmark: batched generation (actors.generation) vs one prompt at a time (the public llm-dna
path), greedy, on a zoo model.

    .venv/bin/python tests/bench/bench_batched_generation.py --probes 64 --batch-sizes 1 8 32 64 \
        --max-new-tokens 64 --device auto --dtype fp32

Prints prompts/s and generated tokens/s per batch size, the speedup over one-at-a-time, and the
fraction of prompts whose batched reply is the same text as the one-at-a-time reply. Load fp32
for the identity check (bf16 batches round differently from single rows); bf16 is for speed.
Goal on a GPU: >= 8x at batch >= 32. Needs torch, transformers and pydantic; no Ray, no boto3.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-a", help="zoo model id")
    p.add_argument("--probes", type=int, default=64, help="prompts (generated offline, deterministic)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--min-new-tokens", type=int, default=0)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="fp32 for the identity check")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores on a GPU "
                   "machine, 1 on a CPU-only run so shared cores do not thrash)")
    p.add_argument("--no-bucketing", action="store_true", help="batches in probe order (no length sort)")
    p.add_argument("--registry", default=None, help="use this zoo registry as is (no build)")
    p.add_argument("--zoo-dir", default=os.environ.get("YARD_TEST_ZOO_DIR", "~/.cache/modelyard/test-zoo"),
                   help="built there on first use (a cache hit after that; the tests' zoo by default)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: the load decision sees no GPU
    import torch

    from actors.config import GenerationConfig
    from actors.fingerprint import generate_probes
    from actors.generation import generate_batched, generate_sequential, render_prompts
    from cluster.models.loading import load_model
    from cluster.models.registry import ModelRegistry
    from cluster.models.zoo import build_zoo, default_zoo_config
    from cluster.node import node_facts

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU visible")
    on_gpu = torch.cuda.is_available()
    torch.set_num_threads(args.threads or (torch.get_num_threads() if on_gpu else 1))
    registry_path = args.registry or build_zoo(default_zoo_config([f"zoo_dir={args.zoo_dir}"])).registry_path
    registry = ModelRegistry.load([registry_path])
    spec = registry.get(args.model)
    # the registry says bf16 for zoo models; the benchmark's --dtype decides (a CPU computes fp32 anyway)
    registry = ModelRegistry({**registry.models, args.model: spec.model_copy(update={"load_in": args.dtype})})
    node = node_facts()
    model, tok, plan = load_model(args.model, registry, node)
    texts = render_prompts(tok, generate_probes(args.probes, seed=0), spec, args.model)
    base = GenerationConfig(max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
                            bucket_by_length=not args.no_bucketing, batch_size=1)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    # warm-up: kernels, allocator, tokenizer caches (not timed)
    generate_sequential(model, tok, texts[:2], base)
    generate_batched(model, tok, texts[:2], base.model_copy(update={"batch_size": 2}))
    sync()
    t0 = time.perf_counter()
    seq = generate_sequential(model, tok, texts, base)
    sync()
    seq_s = time.perf_counter() - t0
    rows = [("one at a time", "-", len(texts) / seq_s, sum(seq.new_tokens) / seq_s, 1.0, 1.0)]
    for bs in args.batch_sizes:
        t0 = time.perf_counter()
        res = generate_batched(model, tok, texts, base.model_copy(update={"batch_size": bs}))
        sync()
        secs = time.perf_counter() - t0
        same = sum(a == b for a, b in zip(res.responses, seq.responses)) / len(texts)
        rows.append(("batched", str(bs), len(texts) / secs, sum(res.new_tokens) / secs, seq_s / secs, same))

    device = torch.cuda.get_device_name(0) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nmodel {args.model} ({plan.dtype} on {device}), {len(texts)} prompts, greedy, "
          f"max_new_tokens {args.max_new_tokens}, min_new_tokens {args.min_new_tokens}, "
          f"bucketing {'off' if args.no_bucketing else 'on'}")
    print(f"{'mode':<15}{'batch':>6}{'prompts/s':>12}{'tokens/s':>11}{'speedup':>9}{'same text':>11}")
    for mode, bs, pps, tps, speedup, same in rows:
        print(f"{mode:<15}{bs:>6}{pps:>12.2f}{tps:>11.1f}{speedup:>8.1f}x{same:>10.0%}")


if __name__ == "__main__":
    main()
