"""tune/persona/gguf.py: GGUF export through llama.cpp's converter where it is found, a one-line
"skipped" where not (llama.cpp is not on PyPI as a converter: issue 15 tracks a real export)."""
from tune.persona.gguf import export_gguf


def test_gguf_export_is_skipped_without_llama_cpp(tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing llama.cpp on it
    assert export_gguf(str(tmp_path), tmp_path / "gguf") == (None, "skipped: llama.cpp not found (set LLAMA_CPP_DIR)")


def test_gguf_export_runs_the_converter_found_in_llama_cpp_dir(tmp_path, monkeypatch):
    # a stand-in converter that writes its --outfile: proves the discovery and the call, not llama.cpp
    (tmp_path / "convert_hf_to_gguf.py").write_text(
        "import sys\nargs = sys.argv\nopen(args[args.index('--outfile') + 1], 'w').write(args[1])\n")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    path, message = export_gguf("/some/merged", tmp_path / "gguf", quant="q4_k_m")
    assert path.endswith("model-f16.gguf") and open(path).read() == "/some/merged"
    assert message == "exported model-f16.gguf; q4_k_m skipped: llama-quantize not found"
