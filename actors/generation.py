"""Batched generation for fingerprints: left padding, length bucketing, greedy by default.

The public llm-dna path generates one prompt at a time; on a GPU that leaves most of the device
idle. `generate_batched` sorts prompts by token length (so a batch pads little), generates a batch
at a time with left padding (every row continues from the right edge), decodes only the new
tokens and hands the replies back in the caller's order. With fp32 greedy decoding the text is
the same as `generate_sequential`'s (the equivalence test and `tests/bench/bench_batched_generation.py`
check it).

    >>> texts = render_prompts(tok, probes, registry.get("llama-a"), "llama-a")     # doctest: +SKIP
    >>> result = generate_batched(model, tok, texts, GenerationConfig(batch_size=32))  # doctest: +SKIP
    >>> result.responses[0], result.prompts_per_s                                      # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

from actors.config import GenerationConfig
from cluster.models.loading import chat_prompt
from cluster.models.registry import ModelSpec

# on_batch(done_prompts, total_prompts, seconds_so_far); it may raise to stop the generation.
OnBatch = Callable[[int, int, float], None]


@dataclass
class GenerationResult:
    responses: list[str]  # in the order of the input texts
    new_tokens: list[int]  # tokens generated per prompt, up to and including the first EOS
    seconds: float
    prompts_per_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def render_prompts(tokenizer, prompts: list[str], spec: ModelSpec, model_id: str,
                   use_chat_template: bool = True) -> list[str]:
    """Each prompt as one user turn in the model's chat template, with the registry's template
    options; the raw prompts when `use_chat_template` is False. A model without a chat template
    raises LoadError naming the model."""
    if not use_chat_template:
        return list(prompts)
    return [chat_prompt(tokenizer, [{"role": "user", "content": p}], spec, model_id) for p in prompts]


def _generate_kwargs(tokenizer, gen: GenerationConfig, max_new_tokens: int, min_new_tokens: int) -> dict:
    kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=gen.do_sample,
                  pad_token_id=tokenizer.pad_token_id)
    if gen.do_sample:
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p)
    else:
        # A checkpoint's generation_config may ask for sampling (e.g. Qwen's temperature/top_k):
        # unset them, so greedy really is greedy and no warning says otherwise.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])


def _count_new_tokens(row, eos_ids: set[int]) -> int:
    """Generated tokens up to and including the first EOS (finished rows are padded after it)."""
    ids = row.tolist()
    for i, tok in enumerate(ids):
        if tok in eos_ids:
            return i + 1
    return len(ids)


def _prepare(tokenizer) -> None:
    tokenizer.padding_side = "left"  # every row must continue from the right edge
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def generate_batched(model, tokenizer, texts: list[str], gen: GenerationConfig, *,
                     on_batch: OnBatch | None = None, add_special_tokens: bool = False) -> GenerationResult:
    """Generate a reply per text, `gen.batch_size` texts at a time (left padded; sorted by token
    length when `gen.bucket_by_length`); replies come back in the order of `texts`.

    Greedy unless `gen.do_sample`; sampling re-seeds torch with `gen.seed` before every batch so a
    rerun of the same texts and config gives the same replies. Only the new tokens are decoded
    (special tokens skipped, whitespace stripped). `on_batch(done, total, seconds)` runs after each
    batch; an exception it raises stops the generation and propagates. `add_special_tokens`: leave
    False for chat-template texts (the template already holds BOS and friends)."""
    import torch

    _prepare(tokenizer)
    n = len(texts)
    order = list(range(n))
    if gen.bucket_by_length and n > 1:
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
        # Longest first: the batch that needs the most memory runs first, so an OOM shows at once.
        order.sort(key=lambda i: -lengths[i])
    kwargs = _generate_kwargs(tokenizer, gen, gen.max_new_tokens, gen.min_new_tokens)
    eos_ids = _eos_ids(model, tokenizer)
    responses: list[str] = [""] * n
    new_tokens: list[int] = [0] * n
    started = time.perf_counter()
    done = 0
    for start in range(0, n, gen.batch_size):
        idx = order[start:start + gen.batch_size]
        inputs = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                           add_special_tokens=add_special_tokens).to(model.device)
        if gen.do_sample:
            torch.manual_seed(gen.seed)
        with torch.inference_mode():
            out = model.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1]:].cpu()
        texts_out = tokenizer.batch_decode(new, skip_special_tokens=True)
        for row, i in enumerate(idx):
            responses[i] = texts_out[row].strip()
            new_tokens[i] = _count_new_tokens(new[row], eos_ids)
        done += len(idx)
        if on_batch is not None:
            on_batch(done, n, time.perf_counter() - started)
    seconds = time.perf_counter() - started
    return GenerationResult(responses, new_tokens, round(seconds, 4), round(n / seconds, 4) if seconds > 0 else 0.0)


def generate_vllm(model, tokenizer, texts: list[str], gen: GenerationConfig, *,
                  on_batch: OnBatch | None = None, add_special_tokens: bool = False) -> GenerationResult:
    """`generate_batched` for a `cluster.engines.engine_vllm.VllmModel`: the same texts tokenized by the
    same HF tokenizer, the same decoding, all prompts in one call (vLLM batches them itself, up
    to its `max_num_seqs`); `on_batch` runs once, at the end. Replies in the order of `texts`."""
    ids = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    sampling = dict(temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed) if gen.do_sample else {}
    out = model.generate(ids, max_new_tokens=gen.max_new_tokens, min_new_tokens=gen.min_new_tokens, **sampling)
    n = len(texts)
    if on_batch is not None:
        on_batch(n, n, out.seconds)
    return GenerationResult(out.texts, out.new_tokens, out.seconds, round(n / out.seconds, 4) if out.seconds > 0 else 0.0)


def generate_for(model) -> Callable:
    """The generate function for `model`: `generate_vllm` for a `cluster.engines.engine_vllm.VllmModel`
    (its `engine` is "vllm"), `generate_batched` for a transformers model. Both take the same
    arguments and give the same GenerationResult."""
    return generate_vllm if getattr(model, "engine", "hf") == "vllm" else generate_batched


def generate_sequential(model, tokenizer, texts: list[str], gen: GenerationConfig, *,
                        add_special_tokens: bool = False) -> GenerationResult:
    """One prompt at a time, no padding: what the public llm-dna path does. For benchmarks and
    the batched-equals-sequential test."""
    import torch

    _prepare(tokenizer)
    kwargs = _generate_kwargs(tokenizer, gen, gen.max_new_tokens, gen.min_new_tokens)
    eos_ids = _eos_ids(model, tokenizer)
    responses, new_tokens = [], []
    started = time.perf_counter()
    for text in texts:
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=add_special_tokens).to(model.device)
        if gen.do_sample:
            torch.manual_seed(gen.seed)
        with torch.inference_mode():
            out = model.generate(**inputs, **kwargs)
        new = out[0, inputs["input_ids"].shape[1]:].cpu()
        responses.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        new_tokens.append(_count_new_tokens(new, eos_ids))
    seconds = time.perf_counter() - started
    n = len(texts)
    return GenerationResult(responses, new_tokens, round(seconds, 4), round(n / seconds, 4) if seconds > 0 else 0.0)
