"""Benchmark: persona SFT training throughput (tokens/s, seconds/step) through tune/persona/train.py.

    .venv/bin/python tests/bench/bench_persona_sft.py                      # zoo qwen3-b, CPU or GPU
    .venv/bin/python tests/bench/bench_persona_sft.py --model-path /models/Qwen3-8B --backend peft
    .venv/bin/python tests/bench/bench_persona_sft.py --model-path /models/Qwen3-8B --backend unsloth
    .venv/bin/python tests/bench/bench_persona_sft.py --model-path /models/Qwen3-8B --backend peft --no-qlora

`--no-qlora` trains the adapter over 16-bit base weights instead of 4-bit NF4 (the seed's QLoRA).
Run one backend per process: importing unsloth patches transformers and trl for the whole process.

Synthetic persona conversations of about `--tokens-per-row` tokens each (the seed's data has p50
~100, p99 ~250) train for `--steps` optimizer steps with the seed's LoRA and batch settings unless
overridden. Prints the trainer's own count of non-padding tokens per second over the whole run and
the steady-state seconds per step (the first step, which pays for warm-up, left out).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

WORDS = ("the cafe opens at nine and the hanok roof drips after rain so I wipe the tables twice "
         "my grandmother taught me to roast beans slowly 느티나무 아래에서 커피를 내려요 ").split()


def synthetic_rows(n: int, words_per_row: int) -> list[dict]:
    """`n` two-turn conversations; words rotate so rows differ."""
    rows = []
    for i in range(n):
        answer = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(words_per_row))
        rows.append({"messages": [{"role": "user", "content": f"Tell me about your morning, part {i}."},
                                  {"role": "assistant", "content": answer}]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", help="HF model dir (default: the test zoo's qwen3-b)")
    parser.add_argument("--backend", choices=["auto", "peft", "unsloth"], default="auto")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 on CUDA, 4 on CPU")
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--r", type=int, default=64)
    parser.add_argument("--tokens-per-row", type=int, default=128, help="approximate assistant words per row")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-qlora", action="store_true", help="16-bit base weights instead of 4-bit NF4")
    parser.add_argument("--json", default=None, help="append the result row to this JSON-lines file")
    args = parser.parse_args()

    import torch
    from transformers import TrainerCallback

    from tune.persona.train import LoraSettings, SftSettings, _run, build_sft_trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    model_path = args.model_path
    if model_path is None:
        from tests.plugins.zoo import zoo_cache_dir
        from cluster.models.zoo import build_zoo, default_zoo_config

        build_zoo(default_zoo_config().model_copy(update={"zoo_dir": str(zoo_cache_dir())}))
        model_path = str(zoo_cache_dir() / "qwen3-b")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    batch = args.batch_size or (16 if cuda else 4)
    rows = synthetic_rows(batch * args.grad_accum * args.steps, args.tokens_per_row)
    cfg = SftSettings(batch_size=batch, grad_accum=args.grad_accum, max_steps=args.steps, max_length=1024,
                      logging_steps=1)
    lora = LoraSettings(r=args.r, alpha=2 * args.r, qlora=not args.no_qlora)

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, *_, **__):
            self.ends.append(time.perf_counter())

    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="bench-persona-sft-") as tmp:
        t0 = time.perf_counter()
        trainer, backend, _ = build_sft_trainer(model_path, rows, [], lora, cfg, tmp, device=args.device,
                                                backend=args.backend, chat_template_kwargs={"enable_thinking": False})
        load_s = time.perf_counter() - t0
        trainer.add_callback(clock)
        result = _run(trainer, "sft", Path(tmp), backend, False, None)
    steady = (clock.ends[-1] - clock.ends[0]) / (len(clock.ends) - 1) if len(clock.ends) > 1 else result.seconds
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    weights = "4-bit NF4" if lora.qlora and cuda else ("bf16" if cuda else "fp32")
    print(f"model {model_path}  backend {backend}  base weights {weights}  device {device}")
    print(f"batch {batch} x accum {args.grad_accum}, r {args.r}, {args.steps} steps, load {load_s:.1f} s, "
          f"optimizer {result.optim}, checkpointing {result.gradient_checkpointing}")
    peak = f"{result.peak_gpu_mem_gib:.1f}" if result.peak_gpu_mem_gib is not None else "-"
    print(f"{'tokens':>10}{'seconds':>10}{'tokens/s':>12}{'s/step':>10}{'s/step (steady)':>18}{'peak GiB':>10}")
    print(f"{result.tokens:>10}{result.seconds:>10.2f}{result.tokens_per_s:>12.0f}"
          f"{result.seconds / max(result.steps, 1):>10.3f}{steady:>18.3f}{peak:>10}")
    if args.json:
        import json

        row = dict(model=model_path, backend=backend, weights=weights, device=device, batch=batch,
                   grad_accum=args.grad_accum, r=args.r, steps=result.steps, load_s=load_s, tokens=result.tokens,
                   seconds=result.seconds, tokens_per_s=result.tokens_per_s, sec_per_step_steady=steady,
                   peak_gpu_mem_gib=result.peak_gpu_mem_gib, optim=result.optim,
                   gradient_checkpointing=result.gradient_checkpointing)
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")

if __name__ == "__main__":
    main()
