"""Depth pruning by Block Influence (ShortGPT, arXiv:2403.03853).

BI_i = 1 - E[cos(x_i, x_{i+1})], the expectation over calibration tokens, where x_i is the hidden
state entering decoder layer i and x_{i+1} the one leaving it: a layer that barely turns its input
is cheap to drop. The `angular` variant averages arccos(cos) / pi instead.

    bi = block_influence(model, tokenizer, texts)
    remove_layers(model, choose_layers(bi, depth=2))
    model.save_pretrained(out)          # reloads with AutoModelForCausalLM.from_pretrained
"""
from __future__ import annotations

import hashlib
import json
import logging
import math

from cluster.store.storage import ArtifactStore

log = logging.getLogger(__name__)

VARIANTS = ("cosine", "angular")
BI_KIND = "bi"
BI_FILE = "bi.json"


def _decoder_layers(model):
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers at model.model.layers (not a decoder-only LM?)")
    return layers


def block_influence(model, tokenizer, texts: list[str], *, variant: str = "cosine", max_tokens: int = 256,
                    batch_size: int = 8) -> list[float]:
    """One BI score per decoder layer (higher = more important), averaged over the non-padding
    tokens of `texts`, each truncated to `max_tokens`."""
    import torch

    if variant not in VARIANTS:
        raise ValueError(f"bi variant {variant!r} is unknown (allowed: {', '.join(VARIANTS)})")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("calibration texts: empty (need at least one non-blank text)")
    layers = _decoder_layers(model)
    n = len(layers)
    # output_hidden_states gives the embeddings and every layer's output, except that the last
    # entry has the final norm applied; the last layer's raw output comes from a hook instead.
    last_out: list = []
    hook = layers[-1].register_forward_hook(
        lambda _m, _a, out: last_out.append(out[0] if isinstance(out, tuple) else out))
    sums = torch.zeros(n, dtype=torch.float64)
    count = 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                  truncation=True, max_length=max_tokens).to(device)
                last_out.clear()
                out = model(**batch, output_hidden_states=True, use_cache=False)
                states = list(out.hidden_states[:n]) + [last_out[-1]]
                mask = batch["attention_mask"].bool()
                for i in range(n):
                    cos = torch.nn.functional.cosine_similarity(
                        states[i][mask].double(), states[i + 1][mask].double(), dim=-1).clamp(-1.0, 1.0)
                    part = (1.0 - cos).sum() if variant == "cosine" else (torch.arccos(cos) / math.pi).sum()
                    sums[i] += part.item()
                count += int(mask.sum())
    finally:
        hook.remove()
        model.train(was_training)
    return [float(s) / count for s in sums]


def choose_layers(bi: list[float], depth: int, *, consecutive: bool = False) -> list[int]:
    """The `depth` layers to remove, ascending: the lowest-BI ones, or with `consecutive` the
    window of `depth` adjacent layers with the lowest summed BI. 0 <= depth < len(bi)."""
    n = len(bi)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth < n:
        raise ValueError(f"prune_depth: {depth!r} must be an integer in 0..{n - 1} (the model has {n} layers)")
    if depth == 0:
        return []
    if consecutive:
        start = min(range(n - depth + 1), key=lambda s: (sum(bi[s:s + depth]), s))
        return list(range(start, start + depth))
    return sorted(sorted(range(n), key=lambda i: (bi[i], i))[:depth])


def _prune_config(config, keep: list[int], n: int) -> None:
    """Make every per-layer field of `config` describe the kept layers only."""
    for name, value in list(vars(config).items()):
        # per-layer lists: layer_types, mlp_layer_types, no_rope_layers, ...
        if "layer" in name and isinstance(value, (list, tuple)) and len(value) == n and name != "mlp_only_layers":
            setattr(config, name, type(value)(value[i] for i in keep))
    if isinstance(getattr(config, "mlp_only_layers", None), (list, tuple)):  # Qwen-MoE: layer indices
        config.mlp_only_layers = [keep.index(i) for i in config.mlp_only_layers if i in keep]
    if isinstance(getattr(config, "max_window_layers", None), int):
        # Qwen2/3: layers at index >= max_window_layers slide; count the kept ones below the bound.
        config.max_window_layers = sum(1 for i in keep if i < config.max_window_layers)
    config.num_hidden_layers = len(keep)


def remove_layers(model, layers: list[int]):
    """Delete decoder `layers` in place; renumber the kept attentions' `layer_idx` (KV cache slots)
    and update the config (num_hidden_layers and every per-layer field). Returns the model."""
    import torch

    decoder = _decoder_layers(model)
    n = len(decoder)
    drop = set(layers)
    if not drop <= set(range(n)) or len(drop) != len(layers):
        raise ValueError(f"layers to remove: {sorted(layers)} must be distinct indices in 0..{n - 1}")
    if len(drop) >= n:
        raise ValueError(f"prune_depth: {len(drop)} would remove every layer (the model has {n} layers)")
    keep = [i for i in range(n) if i not in drop]
    model.model.layers = torch.nn.ModuleList(decoder[i] for i in keep)
    for new_idx, layer in enumerate(model.model.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    _prune_config(model.config, keep, n)
    log.info("removed layers %s of %d; %d remain", sorted(drop), n, len(keep))
    return model


def bi_cache_key(base_id: str, texts: list[str], variant: str, content: dict) -> dict:
    """What identifies a BI computation: the base's content (`cluster.models.content.model_content_key`,
    so a rebuilt model under the same id is a miss), calibration texts (hashed) and variant."""
    digest = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()
    key = {"base_id": base_id, "model": content, "texts_sha256": digest, "variant": variant}
    return json.loads(json.dumps(key, sort_keys=True))  # what comes back from the store compares equal


def bi_scores_cached(store: ArtifactStore, base_id: str, model, tokenizer, texts: list[str],
                     variant: str = "cosine", *, content: dict) -> list[float]:
    """`block_influence` computed once per (base content, calibration texts, variant) and kept in
    `store` (kind "bi"); later calls read the stored scores and never run the model."""
    key = bi_cache_key(base_id, texts, variant, content)
    run = store.find_cached(BI_KIND, base_id, key, BI_FILE)
    if run is not None:
        log.info("BI scores for %s (%s) from the store: %s", base_id, variant, run.prefix)
        return list(store.get_json(f"{run.prefix}/{BI_FILE}")["scores"])
    scores = block_influence(model, tokenizer, texts, variant=variant)
    writer = store.new_run(BI_KIND, base_id)
    writer.put_json(BI_FILE, {"key": key, "scores": scores})
    writer.complete(cache_key=key)
    return scores
