"""tune/persona/gguf.py and gguf_convert.py: a real GGUF export on CPU. llama.cpp's converter comes
from PyPI (llama-cpp-python's source release vendors it; staged once per machine), the models are
the zoo's (a tokenizer trained for them, which llama.cpp's converter names through our runner),
and the file is read back with llama.cpp's own gguf-py reader."""
import json
import sys

import pytest

from tune.persona import gguf
from tune.persona.gguf import export_gguf, stage_llama_cpp
from tune.persona.gguf_convert import gpt2_pretokenizer


def test_gguf_export_is_skipped_without_llama_cpp(tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setattr(gguf, "STAGED", tmp_path / "not-staged")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing llama.cpp on it
    assert export_gguf(str(tmp_path), tmp_path / "gguf") == (None, "skipped: llama.cpp not found (set LLAMA_CPP_DIR)")


@pytest.fixture(scope="module")
def llama_cpp():
    return stage_llama_cpp()


def _read(path: str) -> dict:
    """Header fields and tensor types of a GGUF file, through gguf-py (llama.cpp's reader)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    fields = {k: reader.fields[k].contents() for k in ("general.architecture", "tokenizer.ggml.pre",
                                                          "general.file_type", "tokenizer.ggml.tokens")}
    return {**fields, "types": {t.tensor_type.name for t in reader.tensors}, "tensors": len(reader.tensors)}


# llama-a goes through the converter's sentencepiece-then-BPE path, qwen3-b is the persona demo's
# base; exaone4-c converts the same way (checked by hand, left out to keep the suite short)
@pytest.mark.parametrize("model, arch", [("llama-a", "llama"), ("qwen3-b", "qwen3")])
def test_q8_0_export_of_each_zoo_architecture_reads_back(zoo, llama_cpp, tmp_path, monkeypatch, model, arch):
    monkeypatch.setenv("LLAMA_CPP_DIR", str(llama_cpp))
    monkeypatch.syspath_prepend(str(llama_cpp / "gguf-py"))
    sys.modules.pop("gguf", None)
    model_dir = str(zoo.zoo_dir / model)
    assert gpt2_pretokenizer(model_dir)
    path, message = export_gguf(model_dir, tmp_path / "gguf", quant="q8_0")
    assert message == "exported model-q8_0.gguf", message
    got = _read(path)
    assert got["general.architecture"] == arch and got["tokenizer.ggml.pre"] == "gpt-2"
    assert got["general.file_type"] == 7  # llama.cpp's MOSTLY_Q8_0
    assert "Q8_0" in got["types"] and got["tensors"] > 10
    vocab = json.loads((zoo.zoo_dir / model / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(got["tokenizer.ggml.tokens"]) == len(vocab)
