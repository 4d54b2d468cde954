"""Healing a compressed model with a LoRA adapter, merged back into its weights.

After layers or FFN channels are removed (tune/compress/prune.py, tune/compress/ffn.py) a short LoRA fine-tune on
calibration text recovers much of the lost quality; merging the adapter afterwards leaves a plain
transformers model, so the quantize and evaluate steps see no peft modules.

    model, stats = lora_heal(model, tokenizer, texts, rank=8, steps=50)
    stats["heal_loss_first"], stats["heal_loss_last"]     # causal-LM loss before / after
    model.save_pretrained(out)                            # reloads with AutoModelForCausalLM

The loss is the next-token cross-entropy over the non-padding tokens of `texts` (right-padded,
padding masked out), averaged per token.
"""
from __future__ import annotations

import logging
import math
import random
import time

from cluster.config import UserError
from tune.compress.lm import loss_sum, mean_loss, right_pad, tokenize

log = logging.getLogger(__name__)


class HealArgumentError(UserError, ValueError):
    """A bad argument to `lora_heal`, phrased as one line naming it."""


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HealArgumentError(f"{name}: {value!r} must be a positive integer")


def _check_args(texts, rank, alpha, dropout, steps, lr, batch_size, max_length) -> list[str]:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise HealArgumentError(f"lora_rank: {rank!r} must be an integer >= 0 (0 = no healing)")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not math.isfinite(alpha) or alpha <= 0):
        raise HealArgumentError(f"alpha: {alpha!r} must be a number > 0 (or None for 2 * rank)")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise HealArgumentError(f"dropout: {dropout!r} must be a number in [0, 1)")
    _positive_int("steps", steps)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise HealArgumentError(f"lr: {lr!r} must be a finite number > 0")
    _positive_int("batch_size", batch_size)
    _positive_int("max_length", max_length)
    if isinstance(texts, str):
        raise HealArgumentError("texts: expected a list of strings, got one string")
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise HealArgumentError("texts: empty (need at least one non-blank text)")
    return texts


def _tokenize(tokenizer, texts: list[str], max_length: int) -> list:
    rows = tokenize(tokenizer, texts, max_length)
    if not rows:
        raise HealArgumentError("texts: every text tokenizes to fewer than 2 tokens (nothing to predict)")
    return rows


def lora_heal(model, tokenizer, texts: list[str], *, rank: int, alpha: int | None = None, dropout: float = 0.0,
              steps: int = 50, lr: float = 2e-4, batch_size: int = 4, max_length: int = 128, seed: int = 0,
              target_modules="all-linear", on_step=None):
    """Fine-tune a LoRA adapter of `rank` (scale alpha / rank, alpha defaulting to 2 * rank) on the
    causal-LM loss of `texts` for `steps` AdamW steps of `batch_size` texts (reshuffled each epoch),
    then merge it into the weights. Returns (model, stats).

    The model is changed in place and returned: the same object and class, no peft modules, the
    same state-dict keys, shapes and dtypes, each parameter's requires_grad as it was, in eval
    mode. The global RNG is left as it was (`seed` drives a forked one). `target_modules="all-linear"`
    is every nn.Linear except the output head (peft excludes `get_output_embeddings()`).

    stats: heal_loss_first / heal_loss_last (mean per-token loss over all `texts` before training
    and of the merged model), steps, trainable_params (LoRA parameters), seconds. rank 0 returns
    the model untouched with None losses and steps 0. `on_step(step)` runs after each step.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    texts = _check_args(texts, rank, alpha, dropout, steps, lr, batch_size, max_length)
    started = time.perf_counter()
    if rank == 0:
        return model, {"heal_loss_first": None, "heal_loss_last": None, "steps": 0, "trainable_params": 0,
                       "seconds": 0.0}

    device = next(model.parameters()).device
    rows = _tokenize(tokenizer, texts, max_length)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.eval()
    first = mean_loss(model, rows, batch_size)

    config = LoraConfig(r=rank, lora_alpha=2 * rank if alpha is None else alpha, lora_dropout=float(dropout),
                        target_modules=target_modules, bias="none")
    # fork_rng: the LoRA init and the batch order follow `seed` without moving the caller's RNG
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
        merged = False
        try:
            params = [p for p in peft_model.parameters() if p.requires_grad]
            trainable = sum(p.numel() for p in params)
            opt = torch.optim.AdamW(params, lr=lr)
            rng = random.Random(seed)
            order: list[int] = []
            peft_model.train()
            for step in range(steps):
                if len(order) < min(batch_size, len(rows)):
                    perm = list(range(len(rows)))
                    rng.shuffle(perm)
                    order += perm
                picked, order = order[:batch_size], order[batch_size:]
                loss, n = loss_sum(peft_model, *right_pad([rows[i] for i in picked], device))
                opt.zero_grad(set_to_none=True)
                (loss / max(n, 1)).backward()
                opt.step()
                if on_step is not None:
                    on_step(step + 1)
            del opt, params
            model = peft_model.merge_and_unload()
            merged = True
        finally:
            if not merged:  # a failed run still hands back a plain model, adapters dropped
                model = peft_model.unload()
            for name, p in model.named_parameters():
                p.requires_grad_(requires_grad.get(name, p.requires_grad))
                p.grad = None
            model.eval()

    last = mean_loss(model, rows, batch_size)
    seconds = time.perf_counter() - started
    log.info("LoRA heal rank %d, %d steps on %d texts: loss %.4f -> %.4f (%.1f s)", rank, steps, len(rows),
             first, last, seconds)
    return model, {"heal_loss_first": first, "heal_loss_last": last, "steps": steps, "trainable_params": trainable,
                   "seconds": seconds}
