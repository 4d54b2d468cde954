"""cluster/models/shapes.py: random-weight models of real architectures' published shapes, for speed work
without downloads (the full-size builds run on the GPU machine: BENCHMARKS.md)."""
import json

import pytest

from cluster.config import ConfigError
from cluster.models.registry import ModelRegistry


def test_shapes_have_their_published_parameter_counts():
    from cluster.models.shapes import shape_params

    # EXAONE-4.0-1.2B (tied embeddings), Qwen3-8B, Llama-3.1-8B: counts from their model cards
    assert shape_params("exaone-4.0-1.2b") == pytest.approx(1.279e9, rel=0.002)
    assert shape_params("qwen3-8b") == pytest.approx(8.19e9, rel=0.002)
    assert shape_params("qwen3-4b") == pytest.approx(4.02e9, rel=0.002)
    assert shape_params("qwen3-1.7b") == pytest.approx(1.72e9, rel=0.002)
    assert shape_params("llama-3.1-8b") == pytest.approx(8.03e9, rel=0.002)
    with pytest.raises(ConfigError, match="unknown"):
        shape_params("gpt-9")


def test_the_padded_tokenizer_decodes_every_id_of_the_vocabulary():
    from cluster.models.shapes import padded_tokenizer

    tok = padded_tokenizer(102400)
    assert len(tok) == 102400
    assert tok.decode([102399]).strip() == "<pad_102399>"
    ids = tok("What is the capital of France?")["input_ids"]
    assert 3 <= len(ids) < 20 and max(ids) < 4096  # real merges, not padding
    assert tok.eos_token == "<|im_end|>" and "assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


def test_a_shape_is_built_registered_and_loaded_like_any_model(tmp_path, monkeypatch):
    from cluster.models import shapes
    from cluster.models.loading import load_model

    # a real architecture at toy width, so the build runs here in seconds
    tiny = shapes.Shape("qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(
        vocab_size=5000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, tie_word_embeddings=False), "test")
    monkeypatch.setitem(shapes.SHAPES, "tiny-qwen3", tiny)
    spec = shapes.build_shape("tiny-qwen3", tmp_path, seed=1)
    spec2 = shapes.build_shape("tiny-qwen3", tmp_path, seed=2, model_id="other", num_gpus=2)
    reg = ModelRegistry.load([tmp_path / "models.yaml"])
    assert reg.ids() == ["other", "tiny-qwen3-shape"]
    assert (reg.get("other").num_gpus, reg.get("tiny-qwen3-shape").num_gpus) == (2, 1)
    assert spec.family == "qwen3" and spec.params_b == spec2.params_b and "random weights" in spec.notes
    model, tok, plan = load_model("tiny-qwen3-shape", reg)
    assert model.config.vocab_size == len(tok) == 5000
    out = model.generate(**tok(["hello"], return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > 1
    cfg = json.loads((tmp_path / "tiny-qwen3-shape" / "config.json").read_text())
    assert cfg["eos_token_id"] == tok.eos_token_id


def _register_many(out, prefix, n):
    from cluster.models.registry import ModelSpec
    from cluster.models.shapes import _register

    for i in range(n):
        _register(out, f"{prefix}-{i}", ModelSpec(source=f"./{prefix}-{i}", params_b=1.0))


def test_builds_into_one_folder_at_once_keep_every_registry_entry(tmp_path):
    import multiprocessing

    # `yard zoo shape` runs side by side (one build per GPU): each registration is read-modify-write
    procs = [multiprocessing.get_context("fork").Process(target=_register_many, args=(tmp_path, p, 15)) for p in "ab"]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    reg = ModelRegistry.load([tmp_path / "models.yaml"])
    assert sorted(reg.ids()) == sorted(f"{p}-{i}" for p in "ab" for i in range(15))
