"""After training: the adapter merged into its base as a plain transformers model directory.

    merged = merge_adapter(base, dpo.adapter_dir, out / "merged", dtype="bf16")
    path, message = export_gguf(merged, out / "gguf", quant="q8_0")   # tune/persona/gguf.py
"""
from __future__ import annotations

from pathlib import Path

from tune.persona.train import TrainError

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def merge_adapter(base_path: str, adapter_dir: str, out_dir, *, dtype: str = "bf16") -> str:
    """Merge `adapter_dir` into the full-precision base (peft merge_and_unload) and save the result
    in `dtype` with the tokenizer: a plain transformers model directory. Returns its path."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise TrainError(f"dtype: {dtype!r} is not a merge dtype (allowed: {', '.join(_DTYPES)})")
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise TrainError(f"adapter_dir: {adapter_dir} has no adapter_config.json")
    # merge in fp32, not into 4-bit weights: the merged model must not carry quantisation error
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged = merged.to(getattr(torch, _DTYPES[dtype]))
    out = Path(out_dir)
    merged.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").is_file()
                                  else base_path).save_pretrained(str(out))
    return str(out)
