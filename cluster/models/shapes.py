"""Real-size models with random weights, for speed work on machines that cannot download.

A "shape" is a real architecture's published configuration (layers, widths, heads, vocabulary,
RoPE) built with transformers' own config and model classes, initialised at random from a seed,
saved in HF format with a tokenizer of the architecture's vocabulary size and the zoo's chat
template, and registered in `<out>/models.yaml` like any model. It generates the right amount of
work per token (the same matmuls, KV cache and vocabulary projection as the real model) but
meaningless text: use it for throughput and memory, never for quality or DNA lineage.

The tokenizer is the zoo's byte-level BPE trained on the bundled corpus, its vocabulary padded
with unreachable entries up to the architecture's size, so every id the model can emit decodes.

    yard zoo shape exaone-4.0-1.2b --out .yard/shapes      # 1.28 B parameters, bf16, ~2.6 GB
    yard zoo shape qwen3-8b --out /nvme/shapes --device cuda

    >>> sorted(SHAPES)
    ['exaone-4.0-1.2b', 'llama-3.1-8b', 'olmoe-1b-7b', 'qwen3-1.7b', 'qwen3-4b', 'qwen3-8b']
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.config import ConfigError
from cluster.models.registry import ModelSpec

log = logging.getLogger(__name__)
REGISTRY_NAME = "models.yaml"
TOKENIZER_TRAIN_VOCAB = 4096  # what the bundled corpus supports; the rest of the vocabulary is padding


@dataclass(frozen=True)
class Shape:
    family: str  # registry Architecture
    config_class: str
    model_class: str
    config: dict  # the published config.json's shape fields
    reference: str  # the model whose shape this is


def _rope(theta: float, **scaling) -> dict:
    return {"rope_type": scaling.pop("rope_type", "default"), "rope_theta": theta, **scaling}


SHAPES: dict[str, Shape] = {
    "exaone-4.0-1.2b": Shape("exaone4", "Exaone4Config", "Exaone4ForCausalLM", dict(
        vocab_size=102400, hidden_size=2048, intermediate_size=4096, num_hidden_layers=30, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=65536, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters=_rope(1_000_000.0, rope_type="llama3", factor=16.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=8192),
        sliding_window=None, layer_types=["full_attention"] * 30), "LGAI-EXAONE/EXAONE-4.0-1.2B"),
    "qwen3-1.7b": Shape("qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
        tie_word_embeddings=True, rope_parameters=_rope(1_000_000.0)), "Qwen/Qwen3-1.7B"),
    "qwen3-4b": Shape("qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(
        vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
        tie_word_embeddings=True, rope_parameters=_rope(1_000_000.0)), "Qwen/Qwen3-4B"),
    "qwen3-8b": Shape("qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(
        vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_parameters=_rope(1_000_000.0)), "Qwen/Qwen3-8B"),
    "llama-3.1-8b": Shape("llama", "LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters=_rope(500_000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=8192)), "meta-llama/Llama-3.1-8B"),
    # a mixture of experts: 64 experts of which 8 run per token (1.3 B active of 6.9 B)
    "olmoe-1b-7b": Shape("olmoe", "OlmoeConfig", "OlmoeForCausalLM", dict(
        vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
        num_experts=64, num_experts_per_tok=8, norm_topk_prob=False, clip_qkv=None,
        rope_parameters=_rope(10_000.0)), "allenai/OLMoE-1B-7B-0924"),
}


def shape_params(name: str) -> int:
    """Parameter count of a shape, computed on the meta device (no memory)."""
    import torch
    import transformers

    shape = _shape(name)
    cfg = getattr(transformers, shape.config_class)(**shape.config)
    with torch.device("meta"):
        model = getattr(transformers, shape.model_class)(cfg)
    return sum(p.numel() for p in model.parameters())


def _shape(name: str) -> Shape:
    if name not in SHAPES:
        raise ConfigError(f"shape {name!r}: unknown (known: {', '.join(sorted(SHAPES))})")
    return SHAPES[name]


def padded_tokenizer(vocab_size: int):
    """The zoo's BPE tokenizer trained on the bundled corpus, padded to exactly `vocab_size` ids."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from cluster.models import zoo_train

    fast = zoo_train.train_tokenizer(zoo_train.read_corpus(), TOKENIZER_TRAIN_VOCAB, 2)
    data = json.loads(fast.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    used = set(vocab.values()) | {t["id"] for t in data["added_tokens"]}
    # "Ġ" is the byte-level space: a padding id decodes as " <pad_N>"
    for i in range(vocab_size):
        if i not in used:
            vocab[f"Ġ<pad_{i}>"] = i
    tok = Tokenizer.from_str(json.dumps(data))
    padded = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=fast.bos_token, eos_token=fast.eos_token,
                                     pad_token=fast.pad_token, extra_special_tokens=list(fast.extra_special_tokens),
                                     model_max_length=8192)
    padded.chat_template = fast.chat_template
    if len(padded) != vocab_size:
        raise RuntimeError(f"padded tokenizer has {len(padded)} ids, wanted {vocab_size}")
    return padded


def build_shape(name: str, out_dir: str | Path, *, seed: int = 0, device: str = "auto", model_id: str | None = None,
                num_gpus: int = 1) -> ModelSpec:
    """Write `<out_dir>/<model_id>/` (config, bf16 random weights, tokenizer) and register it in
    `<out_dir>/models.yaml` (other entries kept), needing `num_gpus` GPUs. Returns the registry entry."""
    import torch
    import transformers

    shape = _shape(name)
    model_id = model_id or f"{name}-shape"
    out = Path(out_dir).expanduser()
    target = out / model_id
    started = time.perf_counter()
    tokenizer = padded_tokenizer(shape.config["vocab_size"])
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    cfg = getattr(transformers, shape.config_class)(**shape.config, **ids)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    with torch.device(device):  # built in bf16 directly: an 8B model never exists in fp32
        model = getattr(transformers, shape.model_class)._from_config(cfg, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.generation_config.update(**ids, do_sample=False)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    del model
    if str(device).startswith("cuda"):
        # give the GPU back: left in torch's cache, an 8B shape's 16 GB leave a vLLM started later in
        # this process short of the memory it asks for (an H100: 63 of 79 GiB free)
        from cluster.models.loading import release_memory

        release_memory()
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    spec = ModelSpec(source=f"./{model_id}", family=shape.family, params_b=float(f"{params / 1e9:.4g}"), dtype="bf16",
                     load_in="bf16", derivation="base", lineage_family=model_id, num_gpus=num_gpus,
                     notes=f"random weights in the shape of {shape.reference} (seed {seed}): speed work only")
    _register(out, model_id, spec)
    log.info("shape %s: %s parameters written to %s in %.1fs", name, f"{params:,}", target, time.perf_counter() - started)
    return spec


def _register(out: Path, model_id: str, spec: ModelSpec) -> Path:
    import yaml

    from cluster.config import load_config
    from cluster.models.registry import ModelsFile

    path = out / REGISTRY_NAME
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f".{REGISTRY_NAME}.lock", "w") as lock:  # several builds into one folder at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        models = {}
        if path.is_file():
            models = {mid: s.model_dump(mode="json", exclude_defaults=True)
                      for mid, s in load_config(path, ModelsFile).models.items()}
        models[model_id] = spec.model_dump(mode="json", exclude_defaults=True)
        data = {"kind": "models", "models": models}
        ModelsFile.model_validate(data)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("# Written by `yard zoo shape`: random-weight models of real shapes (speed work only).\n"
                       + yaml.safe_dump(data, sort_keys=False))
        tmp.replace(path)
    return path
