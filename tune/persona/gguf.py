"""GGUF export of a merged model through llama.cpp, when llama.cpp is present.

llama.cpp is not a Python dependency: its `convert_hf_to_gguf.py` is found in `$LLAMA_CPP_DIR` or on
PATH, and `llama-quantize` (for k-quants such as q4_k_m) in `$LLAMA_CPP_DIR`, its `build/bin`, or
PATH. Without them the export is skipped with a message saying so, never an error.

    path, message = export_gguf("runs/x/merged", "runs/x/gguf", quant="q4_k_m")
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SKIPPED = "skipped: llama.cpp not found (set LLAMA_CPP_DIR)"
# types convert_hf_to_gguf.py writes itself; anything else goes through llama-quantize
_DIRECT = {"f32", "f16", "bf16", "q8_0"}


def _find(name: str, extra_dirs: list[Path]) -> str | None:
    for d in extra_dirs:
        if (d / name).is_file():
            return str(d / name)
    return shutil.which(name)


def _llama_dirs() -> list[Path]:
    root = os.environ.get("LLAMA_CPP_DIR")
    return [Path(root), Path(root) / "build" / "bin"] if root else []


def export_gguf(merged_dir: str, out_dir, quant: str = "q4_k_m") -> tuple[str | None, str]:
    """Convert the HF model in `merged_dir` to `out_dir/model-<quant>.gguf`.

    Returns (path, message); path is None when llama.cpp's converter is not found (message
    starts with "skipped:") or a step failed (message starts with "failed:", with the tool's last
    output line). A k-quant without `llama-quantize` leaves the f16 GGUF and says so."""
    quant = quant.lower()
    dirs = _llama_dirs()
    convert = _find("convert_hf_to_gguf.py", dirs)
    if convert is None:
        return None, SKIPPED
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = quant if quant in _DIRECT else "f16"
    converted = out / f"model-{first}.gguf"
    step = subprocess.run([sys.executable, convert, str(merged_dir), "--outfile", str(converted), "--outtype", first],
                          capture_output=True, text=True)
    if step.returncode != 0:
        return None, f"failed: convert_hf_to_gguf.py exited {step.returncode}: {_last_line(step)}"
    if quant in _DIRECT:
        return str(converted), f"exported {converted.name}"
    quantize = _find("llama-quantize", dirs)
    if quantize is None:
        return str(converted), f"exported {converted.name}; {quant} skipped: llama-quantize not found"
    target = out / f"model-{quant}.gguf"
    step = subprocess.run([quantize, str(converted), str(target), quant.upper()], capture_output=True, text=True)
    if step.returncode != 0:
        return str(converted), f"exported {converted.name}; {quant} failed: {_last_line(step)}"
    return str(target), f"exported {target.name}"


def _last_line(step: subprocess.CompletedProcess) -> str:
    lines = (step.stderr or step.stdout or "").strip().splitlines()
    return lines[-1] if lines else "(no output)"
