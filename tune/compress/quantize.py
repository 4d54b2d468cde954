"""Post-training quantization of a sweep candidate with llmcompressor, saved as compressed-tensors.

Schemes: `none` (a plain safetensors save), `W8A16` and `W4A16` (GPTQ over calibration texts,
int weights, 16-bit activations), `FP8_DYNAMIC` (FP8 weights, per-token dynamic FP8 activations,
no calibration) and `FP8` (FP8 weights and static per-tensor FP8 activations, calibrated).

Where each runs:
- `none`, `W8A16`, `W4A16` run anywhere. GPTQ calibration works on CPU with llmcompressor 0.14
  (the toy zoo's models take seconds); on a large model it is slow there but still correct.
- `FP8_DYNAMIC` and `FP8` need a CUDA GPU of compute capability >= 8.9 (Ada, Hopper): only those
  run FP8 matmuls, and the sweep evaluates each candidate's speed on the node that made it, so an
  FP8 candidate elsewhere would be scored on dequantized weights. They are refused, not attempted.

    check_scheme("W4A16", node_facts().cuda_capabilities)        # QuantizeError if it cannot run here
    q = quantize(model, tokenizer, "W4A16", texts, "out/model")   # QuantResult(path, size_bytes, ...)
    model = load_quantized(q.path, device="cuda")                 # eval mode, ready for generate

llmcompressor logs through loguru; `LLM_COMPRESSOR_LOG_LEVEL=WARNING` quiets its per-layer lines.

vLLM and llmcompressor cannot share an environment (compressed-tensors 0.17 vs 0.19). A trial that
evaluates on vLLM quantizes in a child process of another Python (`quant.python`, an environment
with llmcompressor): `quantize_elsewhere` hands it the saved model and reads back the candidate
and its validation loss, measured there (this process never imports compressed-tensors 0.19):

    q, val_loss = quantize_elsewhere("/opt/lc/bin/python", "work/healed", "W4A16", texts, "work/model",
                                     holdout=holdout, max_length=128)
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster.config import UserError

log = logging.getLogger(__name__)

SCHEMES = ("none", "W8A16", "W4A16", "FP8_DYNAMIC", "FP8")
FP8_SCHEMES = ("FP8_DYNAMIC", "FP8")
# GPTQ fits weights to calibration activations; static FP8 observes activation ranges on them.
CALIBRATED_SCHEMES = ("W8A16", "W4A16", "FP8")
FP8_MIN_CUDA_CAPABILITY = 8.9
# Group sizes the int weight-only kernels of vLLM (Marlin, Machete) take, besides per-channel.
INT_GROUP_SIZES = (128, 64, 32)
IGNORE = ["lm_head"]


class QuantizeError(UserError, ValueError):
    """A quantization request that cannot be carried out, phrased as one line starting `quant:`."""


@dataclass
class QuantResult:
    """A saved quantized model: where, which scheme, its weight bytes and the wall seconds taken
    (quantization and save); `details` says how (format, group size, calibration samples, device)."""

    path: str
    scheme: str
    size_bytes: int
    seconds: float
    details: dict = field(default_factory=dict)


def scheme_problem(scheme: str, cuda_capabilities: tuple[float, ...]) -> str | None:
    """Why `scheme` cannot run on a node whose GPUs have these CUDA compute capabilities
    (`()` = CPU only), or None when it can. FP8 schemes need every GPU at >= 8.9, since a trial
    may be placed on any of them; the others run on CPU too."""
    if scheme not in SCHEMES:
        return f"scheme {scheme!r} is unknown (allowed: {', '.join(SCHEMES)})"
    if scheme in FP8_SCHEMES:
        # Compare tenths as integers: 8.9 as a float is not exactly 8.9.
        if not cuda_capabilities or min(round(c * 10) for c in cuda_capabilities) < round(FP8_MIN_CUDA_CAPABILITY * 10):
            has = ("no CUDA GPU (CPU only)" if not cuda_capabilities
                   else "compute capability " + ", ".join(f"{c:.1f}" for c in cuda_capabilities))
            return (f"scheme {scheme} needs a CUDA GPU with compute capability >= {FP8_MIN_CUDA_CAPABILITY:g} "
                    f"(Ada/Hopper FP8); this node has {has}")
    return None


def check_scheme(scheme: str, cuda_capabilities: tuple[float, ...]) -> None:
    """Raise QuantizeError (`quant: ...`, one line) when `scheme_problem` finds one."""
    problem = scheme_problem(scheme, cuda_capabilities)
    if problem:
        raise QuantizeError(f"quant: {problem}")


def weights_size_bytes(path) -> int:
    """Bytes of the weight files (*.safetensors) in the saved model directory `path`."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def _targeted_linears(model) -> list:
    """(name, module) of the Linear layers the recipe quantizes, matched as llmcompressor does."""
    from compressed_tensors.utils import match_named_modules

    return list(match_named_modules(model, ["Linear"], IGNORE))


def choose_group_size(model) -> int | None:
    """The largest of INT_GROUP_SIZES that divides every targeted Linear's in_features, or None
    (per-channel scales) when none does."""
    in_features = {int(module.in_features) for _, module in _targeted_linears(model)}
    for group_size in INT_GROUP_SIZES:
        if all(f % group_size == 0 for f in in_features):
            return group_size
    return None


def _int_scheme(preset: str, group_size: int | None):
    """The W8A16/W4A16 preset with `group_size` instead of its fixed 128 (None: per channel).

    Why: the preset's 128 must divide every in_features. llmcompressor only checks layers with
    in_features >= 128, so a 96-wide layer (the toy zoo's hidden size) passes the check and then
    crashes the GPTQ observer (unflatten 96 into groups of 128); a pruned FFN width can be any
    number. A size that divides every layer keeps one scheme for the whole model and stays
    servable by vLLM's int kernels."""
    from compressed_tensors.quantization import QuantizationStrategy, preset_name_to_scheme

    scheme = preset_name_to_scheme(preset, ["Linear"])
    update = ({"group_size": group_size} if group_size is not None
              else {"strategy": QuantizationStrategy.CHANNEL, "group_size": None})
    return scheme.model_copy(update={"weights": scheme.weights.model_copy(update=update)})


def _recipe(model, scheme: str) -> tuple[object, dict]:
    """The llmcompressor modifier for `scheme`, and what `details` records about it."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    if scheme in ("W8A16", "W4A16"):
        group_size = choose_group_size(model)
        # config_groups, not scheme=: llmcompressor 0.14 accepts only preset names or
        # {preset: targets} for `scheme`, and the preset's group size is what must change here.
        modifier = GPTQModifier(config_groups={"group_0": _int_scheme(scheme, group_size)}, ignore=IGNORE)
        return modifier, {"group_size": group_size, "strategy": "group" if group_size else "channel"}
    return QuantizationModifier(targets="Linear", scheme=scheme, ignore=IGNORE), {"group_size": None}


def _calibration_dataset(tokenizer, texts: list[str], max_seq_length: int):
    """Tokenized texts as a `datasets.Dataset` (input_ids, attention_mask), which llmcompressor
    uses as is: no dataset download, no second tokenization."""
    from datasets import Dataset

    enc = tokenizer(texts, truncation=True, max_length=max_seq_length)
    rows = [(ids, mask) for ids, mask in zip(enc["input_ids"], enc["attention_mask"]) if ids]
    return Dataset.from_dict({"input_ids": [r[0] for r in rows], "attention_mask": [r[1] for r in rows]})


def _calibration_device(model):
    """Where calibration runs: the model's own device if it is already on a GPU; else the first
    visible CUDA device when there is one (the model is moved there: llmcompressor calibrates on
    its main accelerator, cuda:0, which under Ray is the GPU the trial was given); else CPU."""
    import torch

    current = next(model.parameters()).device
    if current.type == "cuda":
        return current
    if torch.cuda.is_available():
        device = torch.device("cuda", 0)
        model.to(device)
        return device
    return current


@contextlib.contextmanager
def _config_source(model):
    """Point `model.config._name_or_path` at a temporary copy of the in-memory config while
    llmcompressor runs.

    Why: oneshot reads the config at `_name_or_path` (to validate, and again on save, where it
    overwrites the saved config.json with that 'original' one). For a model pruned or merged in
    memory, that path holds the unpruned base's config (wrong layer count or widths), or nothing
    at all for a model built in memory, which fails outright."""
    original = model.config._name_or_path
    with tempfile.TemporaryDirectory(prefix="yard-quant-config-") as tmp:
        model.config.save_pretrained(tmp)
        model.config._name_or_path = tmp
        try:
            yield
        finally:
            model.config._name_or_path = original


def _quantization_config(path) -> dict | None:
    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    return config.get("quantization_config")


def quantize(model, tokenizer, scheme: str, calibration_texts: list[str], out_dir, *,
             num_calibration_samples: int = 64, max_seq_length: int = 256,
             cuda_capabilities: tuple[float, ...] = ()) -> QuantResult:
    """Quantize `model` with `scheme` and save it with `tokenizer` to `out_dir` (new or empty),
    in compressed-tensors format (`none`: plain safetensors), reloadable by `load_quantized` or
    `AutoModelForCausalLM.from_pretrained`.

    The scheme is checked first against `cuda_capabilities` (the node's GPUs, `()` = CPU).
    Calibrated schemes use the first `num_calibration_samples` non-blank texts, each truncated
    to `max_seq_length` tokens. The model may live only in memory (pruned, LoRA-merged): no path
    is needed. Except for `none`, `model` is quantized in place and moved to the GPU when one is
    visible; do not use it afterwards, reload the saved directory instead."""
    check_scheme(scheme, cuda_capabilities)
    for name, value in (("num_calibration_samples", num_calibration_samples), ("max_seq_length", max_seq_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise QuantizeError(f"quant: {name}: {value!r} must be a positive integer")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QuantizeError(f"quant: out_dir: {out} exists and is not an empty directory")
    texts = [t for t in calibration_texts if t.strip()][:num_calibration_samples]
    if scheme in CALIBRATED_SCHEMES and not texts:
        raise QuantizeError(f"quant: calibration_texts: empty (scheme {scheme} calibrates on them; "
                            f"pass at least one non-blank text)")

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if scheme == "none":
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        details = {"format": None, "device": str(next(model.parameters()).device)}
    else:
        from llmcompressor import oneshot

        device = _calibration_device(model)
        modifier, details = _recipe(model, scheme)
        calibrated = scheme in CALIBRATED_SCHEMES
        data = {}
        if calibrated:
            dataset = _calibration_dataset(tokenizer, texts, max_seq_length)
            # in order, not shuffled: the same texts give the same checkpoint
            data = {"dataset": dataset, "num_calibration_samples": len(dataset), "max_seq_length": max_seq_length,
                    "shuffle_calibration_samples": False}
        with _config_source(model), warnings.catch_warnings():
            # llmcompressor's own save of its offloaded modules; harmless at these sizes
            warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
            oneshot(model=model, tokenizer=tokenizer, recipe=modifier, save_compressed=True, output_dir=str(out),
                    **data)
        qconfig = _quantization_config(out) or {}
        details.update(format=qconfig.get("format"), device=str(device),
                       calibration_samples=data.get("num_calibration_samples", 0),
                       max_seq_length=max_seq_length if calibrated else None)
    seconds = time.perf_counter() - started
    size_bytes = weights_size_bytes(out)
    log.info("quantized with %s in %.1f s: %s (%.2f MB of weights)", scheme, seconds, out, size_bytes / 1e6)
    return QuantResult(path=str(out), scheme=scheme, size_bytes=size_bytes, seconds=seconds, details=details)


def load_quantized(path, device: str = "cpu"):
    """The model saved by `quantize` at `path`, on `device` (`cpu`, `cuda`, `cuda:N`), in eval
    mode and ready for `generate`.

    Compressed weights are dequantized at load (transformers 5.17's `dequantize=True`; its
    default would decompress on the first forward instead), so every scheme runs on CPU too.
    The exception: an FP8 checkpoint on CUDA keeps its FP8 weights and runs transformers' FP8
    kernels (`use_optimized_inference`; transformers falls back itself below capability 8.9)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    if not (Path(path) / "config.json").is_file():
        raise QuantizeError(f"quant: path: {path} has no config.json (not a saved model directory)")
    kwargs = {}
    qconfig = _quantization_config(path)
    if qconfig is not None:
        fp8_on_cuda = str(device).startswith("cuda") and qconfig.get("format") == "float-quantized"
        kwargs["quantization_config"] = (CompressedTensorsConfig(use_optimized_inference=True) if fp8_on_cuda
                                         else CompressedTensorsConfig(dequantize=True))
    with warnings.catch_warnings():
        # that the checkpoint's quantization_config wins over ours except for the load options: intended
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        model = AutoModelForCausalLM.from_pretrained(path, device_map=str(device), **kwargs)
    return model.eval()


# ------------------------------------------------------------------- in another Python environment

_REPO = Path(__file__).resolve().parents[2]  # where `tune` imports from, for the child
REQUEST_FILE, RESULT_FILE = "request.json", "result.json"


def quantize_elsewhere(python: str, model_dir, scheme: str, calibration_texts: list[str], out_dir, *,
                       holdout: list[str], max_length: int, num_calibration_samples: int = 64,
                       max_seq_length: int = 256, cuda_capabilities: tuple[float, ...] = (), threads: int = 1,
                       on_wait: Callable[[], None] | None = None, timeout_s: float | None = None,
                       ) -> tuple[QuantResult, float]:
    """`quantize` run by `python` (another environment's interpreter, with llmcompressor) on the
    model saved at `model_dir` (weights and tokenizer), then the saved candidate reloaded there and
    its LM loss measured on `holdout`: (QuantResult, val_loss). The child loads on the GPU when it
    sees one, so the caller frees its own copy first. `on_wait()` runs every 2 s while the child
    works (a heartbeat). A child that fails raises QuantizeError with its last stderr line."""
    check_scheme(scheme, cuda_capabilities)  # here, so a refusal costs no child
    out = Path(out_dir)
    work = Path(tempfile.mkdtemp(prefix="yard-quant-", dir=out.parent))
    request = {"model_dir": str(model_dir), "scheme": scheme, "texts": list(calibration_texts), "out_dir": str(out),
               "holdout": list(holdout), "max_length": int(max_length), "threads": int(threads),
               "num_calibration_samples": num_calibration_samples, "max_seq_length": max_seq_length,
               "cuda_capabilities": list(cuda_capabilities)}
    (work / REQUEST_FILE).write_text(json.dumps(request))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")]))}
    env.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")
    err = work / "stderr.txt"
    started = time.monotonic()
    with open(err, "wb") as stderr:
        try:
            proc = subprocess.Popen([python, "-m", "tune.compress.quantize", str(work / REQUEST_FILE)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        except OSError as exc:
            raise QuantizeError(f"quant: python: {python}: cannot start it ({exc.strerror or exc})") from exc
        while proc.poll() is None:
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                proc.kill()
                proc.wait()
                raise QuantizeError(f"quant: python: {python}: no result after {timeout_s:g} s (killed)")
            if on_wait is not None:
                on_wait()
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass
    if proc.returncode != 0 or not (work / RESULT_FILE).is_file():
        lines = [ln.strip() for ln in err.read_text(errors="replace").splitlines() if ln.strip()]
        raise QuantizeError(f"quant: python: {python}: exit {proc.returncode}: "
                            f"{lines[-1] if lines else 'no error output'}")
    result = json.loads((work / RESULT_FILE).read_text())
    return QuantResult(**result["quant"]), float(result["val_loss"])


def _child(request_path: str) -> int:
    """The child's side of `quantize_elsewhere` (`python -m tune.compress.quantize REQUEST`)."""
    req = json.loads(Path(request_path).read_text())
    if not (Path(req["model_dir"]) / "config.json").is_file():  # before seconds of imports
        print(f"quant: {req['model_dir']}: no config.json there (not a saved model)", file=sys.stderr)
        return 1
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tune.compress.lm import lm_loss

    torch.set_num_threads(max(1, req["threads"]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(req["model_dir"], dtype="auto", device_map=device)
    tokenizer = AutoTokenizer.from_pretrained(req["model_dir"])
    q = quantize(model, tokenizer, req["scheme"], req["texts"], req["out_dir"],
                 num_calibration_samples=req["num_calibration_samples"], max_seq_length=req["max_seq_length"],
                 cuda_capabilities=tuple(req["cuda_capabilities"]))
    del model
    candidate = load_quantized(q.path, device=device)
    val = lm_loss(candidate, tokenizer, req["holdout"], max_length=req["max_length"], add_special_tokens=False)
    result = {"quant": asdict(q), "val_loss": val, "python": sys.executable}
    (Path(request_path).parent / RESULT_FILE).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
