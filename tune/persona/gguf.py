"""GGUF export of a merged model through llama.cpp's converter, when it is present.

llama.cpp is not a Python dependency. Its converter (`convert_hf_to_gguf.py` with the `conversion`
and `gguf-py` packages beside it) is found in `$LLAMA_CPP_DIR`, in the folder `stage_llama_cpp()`
fills from PyPI (llama-cpp-python's source release vendors llama.cpp; `python -m tune.persona.gguf
stage` fetches it once, about 3 MB kept of a 76 MB download), or on PATH; `llama-quantize` (for
k-quants such as q4_k_m) in `$LLAMA_CPP_DIR`, its `build/bin`, or PATH. The converter runs through
`tune.persona.gguf_convert`, which lets it name a tokenizer trained for the model (the zoo's).
f32, f16, bf16 and q8_0 need only the converter (and `sentencepiece`); without the converter the
export is skipped with a message saying so, never an error.

    path, message = export_gguf("runs/x/merged", "runs/x/gguf", quant="q8_0")
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


LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python source release whose vendored llama.cpp is staged
STAGED = Path.home() / ".cache" / "modelyard" / "llama-cpp" / LLAMA_CPP_PYTHON


def _llama_dirs() -> list[Path]:
    root = os.environ.get("LLAMA_CPP_DIR")
    dirs = [Path(root), Path(root) / "build" / "bin"] if root else []
    return dirs + [STAGED]


def stage_llama_cpp(dest: Path = STAGED) -> Path:
    """llama.cpp's converter in `dest`, taken from llama-cpp-python's source release on PyPI (the
    converter script, `conversion/`, `gguf-py/`); done once, reused after. RuntimeError with pip's
    last line when the download fails."""
    import tarfile
    import tempfile

    if (dest / "convert_hf_to_gguf.py").is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        step = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                               f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp], capture_output=True, text=True)
        if step.returncode != 0:
            raise RuntimeError(f"llama-cpp-python=={LLAMA_CPP_PYTHON}: pip download failed: {_last_line(step)}")
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        staging = Path(tmp) / "llama.cpp"
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()
                       and m.name[len(prefix):].startswith(keep)]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(staging, members=members, filter="data")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(staging), dest)
    return dest


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
    # the runner imports only the standard library and llama.cpp's files: run as a plain script
    runner = [sys.executable, str(Path(__file__).with_name("gguf_convert.py")), str(Path(convert).parent)]
    step = subprocess.run([*runner, str(merged_dir), "--outfile", str(converted), "--outtype", first],
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


if __name__ == "__main__":  # `python -m tune.persona.gguf stage [DIR]`
    if sys.argv[1:2] != ["stage"]:
        sys.exit("usage: python -m tune.persona.gguf stage [DIR]")
    print(stage_llama_cpp(Path(sys.argv[2]) if len(sys.argv) > 2 else STAGED))
