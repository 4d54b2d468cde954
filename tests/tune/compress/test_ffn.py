import logging
from pathlib import Path

import pytest
import torch

from tune.compress.ffn import FfnPruneError, ffn_importance, kept_width, prune_ffn

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

CORPUS = Path(__file__).resolve().parents[3] / "cluster" / "models" / "zoo_corpus"
BASES = ["llama-a", "qwen3-b", "exaone4-c"]


@pytest.fixture(scope="module")
def texts():
    lines = []
    for f in sorted(CORPUS.glob("*.txt"))[:4]:
        lines += [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()][:2]
    return lines


def _load(zoo, model_id):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = zoo.zoo_dir / model_id
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def llama(zoo):
    return _load(zoo, "llama-a")


@pytest.fixture(scope="module")
def llama_importance(llama, texts):
    return ffn_importance(*llama, texts, max_tokens=48)


def _logits(model, tok, text="U: What should I cook for dinner tonight?"):
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


def test_importance_one_nonnegative_vector_per_layer(llama, llama_importance):
    model, _ = llama
    assert len(llama_importance) == model.config.num_hidden_layers == 6
    for scores in llama_importance:
        assert scores.shape == (model.config.intermediate_size,) == (256,)
        assert scores.dtype == torch.float32 and scores.device.type == "cpu"
        assert bool((scores >= 0).all()) and float(scores.max()) > 0
    assert not model.training
    assert not any(m._forward_pre_hooks for m in model.modules())  # hooks removed


def test_importance_ignores_padding(llama, texts):
    model, tok = llama
    short, long = texts[0], " ".join(texts[1:4])
    batched = ffn_importance(model, tok, [short, long], batch_size=2)
    alone = ffn_importance(model, tok, [short, long], batch_size=1)
    for a, b in zip(batched, alone):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_id", BASES)
def test_pruned_model_saves_and_reloads_with_new_width(zoo, texts, tmp_path, model_id):
    from transformers import AutoModelForCausalLM

    model, tok = _load(zoo, model_id)
    importance = ffn_importance(model, tok, texts, max_tokens=32)
    before = _logits(model, tok)
    assert prune_ffn(model, 0.75, importance) is model
    assert model.config.intermediate_size == 192
    for layer in model.model.layers:
        assert layer.mlp.gate_proj.weight.shape == layer.mlp.up_proj.weight.shape == (192, 96)
        assert layer.mlp.down_proj.weight.shape == (96, 192)
    pruned = _logits(model, tok)
    assert pruned.shape == before.shape and not torch.equal(pruned, before)
    model.save_pretrained(tmp_path)

    # transformers' logger does not propagate to caplog; its load report names MISSING/UNEXPECTED keys
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    try:
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [m for m in messages if "MISSING" in m or "UNEXPECTED" in m or "MISMATCH" in m]
    assert reloaded.config.intermediate_size == 192
    assert reloaded.model.layers[0].mlp.down_proj.in_features == 192
    torch.testing.assert_close(_logits(reloaded, tok), pruned)


def test_keep_ratio_one_is_a_noop(llama, llama_importance):
    model, tok = llama
    before = _logits(model, tok)
    weights = [p.clone() for p in model.parameters()]
    assert prune_ffn(model, 1.0, llama_importance) is model
    assert model.config.intermediate_size == 256
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert torch.equal(_logits(model, tok), before)


def test_keeps_the_important_channels(zoo, texts):
    model, tok = _load(zoo, "qwen3-b")
    dead = [5, 77, 200]
    for layer in model.model.layers:  # a channel whose up_proj row is zero never reaches down_proj
        layer.mlp.up_proj.weight.data[dead] = 0.0
    importance = ffn_importance(model, tok, texts, max_tokens=32)
    assert all(float(s[dead].max()) == 0.0 for s in importance)
    kept_rows = [layer.mlp.gate_proj.weight[[0, 1, 255]].clone() for layer in model.model.layers]
    before = _logits(model, tok)
    # keep 253 of 256 (multiple_of=1: no rounding): exactly the three zeroed channels go
    prune_ffn(model, 253 / 256, importance, multiple_of=1)
    assert model.config.intermediate_size == 253
    for layer, rows in zip(model.model.layers, kept_rows):
        # kept channels stay in their original order: old 0, 1 -> new 0, 1; old 255 -> new 252
        assert torch.equal(layer.mlp.gate_proj.weight[[0, 1, 252]], rows)
    # the dropped channels contributed nothing, so the outputs are unchanged
    torch.testing.assert_close(_logits(model, tok), before, rtol=1e-5, atol=1e-5)


def test_width_is_a_multiple_of_eight_when_it_allows():
    assert kept_width(256, 0.75) == 192
    assert kept_width(256, 0.7) == 176  # round(179.2) = 179 -> nearest multiple of 8
    assert kept_width(256, 0.01) == 3  # below 8: kept as rounded
    assert kept_width(256, 0.0001) == 1  # at least one channel
    assert kept_width(256, 0.99) == 256
    assert kept_width(100, 1.0) == 100  # full width kept even when not a multiple of 8
    assert kept_width(1024, 0.5, multiple_of=128) == 512
    assert kept_width(1024, 0.3, multiple_of=128) == 256


@pytest.mark.parametrize("keep_ratio", [0, 0.0, -0.5, 1.01, 2, float("nan"), float("inf"), True, "0.5", None])
def test_bad_keep_ratio_is_one_line_naming_it(llama, llama_importance, keep_ratio):
    model, _ = llama
    with pytest.raises(ValueError) as err:
        prune_ffn(model, keep_ratio, llama_importance)
    assert isinstance(err.value, FfnPruneError)
    assert "keep_ratio" in str(err.value) and "\n" not in str(err.value)
    assert model.config.intermediate_size == 256


def test_bad_importance_and_texts(llama, llama_importance):
    model, tok = llama
    with pytest.raises(FfnPruneError, match="one per decoder layer"):
        prune_ffn(model, 0.5, llama_importance[:5])
    with pytest.raises(FfnPruneError, match=r"importance\[2\]: expected shape \(256,\)"):
        prune_ffn(model, 0.5, llama_importance[:2] + [torch.ones(128)] + llama_importance[3:])
    with pytest.raises(FfnPruneError, match=r"importance\[0\]: has NaN"):
        prune_ffn(model, 0.5, [torch.full((256,), float("nan"))] + llama_importance[1:])
    with pytest.raises(FfnPruneError, match="calibration texts"):
        ffn_importance(model, tok, ["  ", ""])
    with pytest.raises(FfnPruneError, match="max_tokens"):
        ffn_importance(model, tok, ["hi"], max_tokens=0)
    assert model.config.intermediate_size == 256


def test_unexpected_mlp_shape_is_a_clear_error(zoo):
    model, tok = _load(zoo, "exaone4-c")
    layer = model.model.layers[3].mlp
    layer.up_proj = torch.nn.Linear(96, 200, bias=False)
    with pytest.raises(FfnPruneError, match=r"layer 3: mlp shapes .*up \(200, 96\).*intermediate_size 256"):
        prune_ffn(model, 0.5, [torch.ones(256)] * 6)
    model.model.layers[1].mlp = torch.nn.Identity()
    with pytest.raises(FfnPruneError, match="layer 1: mlp Identity has no nn.Linear"):
        ffn_importance(model, tok, ["hi"])
