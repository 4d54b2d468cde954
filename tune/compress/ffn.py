"""Width pruning of the gated FFN (gate_proj / up_proj / down_proj) by activation importance.

A channel j of layer i's MLP is the j-th row of gate_proj and up_proj and the j-th column of
down_proj; its importance is the mean |act(gate(x)) * up(x)|_j over calibration tokens, the
input down_proj sees (the activation criterion of Minitron, arXiv:2407.14679). Removing a
channel removes exactly its contribution to the layer's output, nothing else.

    importance = ffn_importance(model, tokenizer, texts)
    prune_ffn(model, 0.75, importance)      # every layer keeps the same 75 % (rounded, see below)
    model.save_pretrained(out)              # reloads with AutoModelForCausalLM, new intermediate_size
"""
from __future__ import annotations

import logging
import math

from cluster.config import UserError
from tune.compress.lm import right_pad

log = logging.getLogger(__name__)


class FfnPruneError(UserError, ValueError):
    """A bad argument to ffn_importance / prune_ffn, or a model whose MLPs cannot be width-pruned."""


def _mlps(model) -> list:
    """Every decoder layer's MLP, checked to be a consistent gated MLP of config.intermediate_size."""
    import torch

    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise FfnPruneError(f"{type(model).__name__}: no decoder layers at model.model.layers "
                            f"(not a decoder-only LM?)")
    width = getattr(model.config, "intermediate_size", None)
    mlps = []
    for i, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        projs = [getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
        if not all(isinstance(p, torch.nn.Linear) for p in projs):
            raise FfnPruneError(f"layer {i}: mlp {type(mlp).__name__} has no nn.Linear gate_proj / up_proj / "
                                f"down_proj (MoE or quantized MLPs cannot be width-pruned)")
        gate, up, down = projs
        hidden = down.out_features
        if not (gate.out_features == up.out_features == down.in_features == width
                and gate.in_features == up.in_features == hidden):
            raise FfnPruneError(
                f"layer {i}: mlp shapes gate {tuple(gate.weight.shape)}, up {tuple(up.weight.shape)}, down "
                f"{tuple(down.weight.shape)} do not match config.intermediate_size {width}")
        mlps.append(mlp)
    return mlps


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FfnPruneError(f"{name}: {value!r} must be a positive integer")


def ffn_importance(model, tokenizer, texts: list[str], *, max_tokens: int = 128, batch_size: int = 8) -> list:
    """Per decoder layer, a float32 CPU tensor (intermediate_size,): the mean absolute value of each
    channel of down_proj's input over the non-padding tokens of `texts` (each truncated to
    `max_tokens`). The model's weights and train mode are left as they were."""
    import torch

    _positive_int("max_tokens", max_tokens)
    _positive_int("batch_size", batch_size)
    if isinstance(texts, str):
        raise FfnPruneError("calibration texts: expected a list of strings, got one string")
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise FfnPruneError("calibration texts: empty (need at least one non-blank text)")
    mlps = _mlps(model)
    sums = [torch.zeros(model.config.intermediate_size, dtype=torch.float64) for _ in mlps]
    mask_now: list = []  # the current batch's token mask, read by the hooks

    def hook_for(i):
        def hook(_module, args):
            x = args[0]
            sums[i] += x[mask_now[0].to(x.device)].abs().double().sum(0).cpu()
        return hook

    hooks = [mlp.down_proj.register_forward_pre_hook(hook_for(i)) for i, mlp in enumerate(mlps)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                rows = [tokenizer(t, truncation=True, max_length=max_tokens)["input_ids"]
                        for t in texts[start:start + batch_size]]
                ids, mask = right_pad(rows, device)
                mask_now[:] = [mask.bool()]
                model(input_ids=ids, attention_mask=mask, use_cache=False)
                tokens += int(mask.sum())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if tokens == 0:
        raise FfnPruneError("calibration texts: tokenize to no tokens")
    return [(s / tokens).float() for s in sums]


def kept_width(intermediate_size: int, keep_ratio: float, multiple_of: int = 8) -> int:
    """How many channels each layer keeps: round(keep_ratio * intermediate_size), rounded to the
    nearest multiple of `multiple_of` (at least one multiple) when that is below the full width."""
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not math.isfinite(keep_ratio) \
            or not 0.0 < keep_ratio <= 1.0:
        raise FfnPruneError(f"keep_ratio: {keep_ratio!r} must be a number in (0, 1] (1.0 keeps every channel)")
    _positive_int("multiple_of", multiple_of)
    kept = max(1, round(keep_ratio * intermediate_size))
    # Matmul kernels (tensor cores want dims divisible by 8 for fp16/bf16) and group quantization
    # (compressed-tensors rejects in_features not divisible by group_size, and down_proj's
    # in_features is this width) need aligned widths; an unaligned width is slower or unquantizable.
    if multiple_of <= kept < intermediate_size:
        kept = min(intermediate_size, max(multiple_of, round(kept / multiple_of) * multiple_of))
    return kept


def _slice_linear(linear, index, dim: int) -> None:
    """Keep `index` along the weight's `dim` (0: out-features, with the bias; 1: in-features)."""
    import torch

    weight = linear.weight
    linear.weight = torch.nn.Parameter(weight.detach().index_select(dim, index).clone(),
                                       requires_grad=weight.requires_grad)
    if dim == 0:
        if linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias.detach().index_select(0, index).clone(),
                                             requires_grad=linear.bias.requires_grad)
        linear.out_features = len(index)
    else:
        linear.in_features = len(index)


def prune_ffn(model, keep_ratio: float, importance: list, *, multiple_of: int = 8):
    """Keep the `kept_width(intermediate_size, keep_ratio, multiple_of)` most important channels
    (ties to the lower index) of every layer's MLP, in their original order: gate/up out-features
    and down in-features are sliced in place and config.intermediate_size updated. The same count in
    every layer keeps config.intermediate_size one number, so the saved model reloads with plain
    transformers. keep_ratio 1.0 changes nothing. Returns the model."""
    import torch

    mlps = _mlps(model)
    width = model.config.intermediate_size
    kept = kept_width(width, keep_ratio, multiple_of)
    if isinstance(importance, torch.Tensor) or len(importance) != len(mlps):
        raise FfnPruneError(f"importance: expected a list of {len(mlps)} tensors (one per decoder layer), got "
                            f"{len(importance) if not isinstance(importance, torch.Tensor) else 'one tensor'}")
    for i, scores in enumerate(importance):
        if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (width,):
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise FfnPruneError(f"importance[{i}]: expected shape ({width},) (intermediate_size), got {got}")
        if not bool(torch.isfinite(scores).all()):
            raise FfnPruneError(f"importance[{i}]: has NaN or infinite scores")
    if kept == width:
        return model
    for mlp, scores in zip(mlps, importance):
        order = torch.argsort(scores.detach().float().cpu(), descending=True, stable=True)
        index = order[:kept].sort().values.to(mlp.down_proj.weight.device)
        _slice_linear(mlp.gate_proj, index, 0)
        _slice_linear(mlp.up_proj, index, 0)
        _slice_linear(mlp.down_proj, index, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = kept
    model.config.intermediate_size = kept
    log.info("FFN width %d -> %d in %d layers (keep_ratio %.3f)", width, kept, len(mlps), keep_ratio)
    return model
