import logging
import math
from pathlib import Path

import pytest

from cluster.store.storage_local import LocalStore
from tests.cluster.models.test_content import key_of, perturb, register_copy
from tune.compress.prune import bi_scores_cached, block_influence, choose_layers, remove_layers

CORPUS = Path(__file__).resolve().parents[3] / "cluster" / "models" / "zoo_corpus"
BASES = ["llama-a", "qwen3-b", "exaone4-c"]


@pytest.fixture(scope="module")
def texts():
    lines = []
    for f in sorted(CORPUS.glob("*.txt"))[:4]:
        lines += [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()][:3]
    return lines


def _load(zoo, model_id):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = zoo.zoo_dir / model_id
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("variant", ["cosine", "angular"])
def test_block_influence_one_finite_score_per_layer(zoo, texts, variant):
    model, tok = _load(zoo, "llama-a")
    bi = block_influence(model, tok, texts, variant=variant)
    assert len(bi) == model.config.num_hidden_layers == 6
    assert all(math.isfinite(s) and 0.0 <= s <= (2.0 if variant == "cosine" else 1.0) for s in bi)
    assert max(bi) > 0


def test_block_influence_ignores_padding(zoo, texts):
    model, tok = _load(zoo, "qwen3-b")
    alone = block_influence(model, tok, texts[:1])
    padded = block_influence(model, tok, [texts[0], texts[0] + " " + " ".join(texts[1:4])], batch_size=2)
    both = block_influence(model, tok, [texts[0], texts[0] + " " + " ".join(texts[1:4])], batch_size=1)
    assert padded == pytest.approx(both, rel=1e-4)
    assert alone != pytest.approx(padded)


def test_block_influence_rejects_empty_and_unknown_variant(zoo):
    model, tok = _load(zoo, "llama-a")
    with pytest.raises(ValueError, match="calibration texts"):
        block_influence(model, tok, ["  "])
    with pytest.raises(ValueError, match="allowed: cosine, angular"):
        block_influence(model, tok, ["hi"], variant="euclid")


def test_choose_layers_lowest_and_consecutive():
    bi = [0.9, 0.1, 0.5, 0.2, 0.15, 0.8]
    assert choose_layers(bi, 2) == [1, 4]
    assert choose_layers(bi, 3) == [1, 3, 4]
    assert choose_layers(bi, 2, consecutive=True) == [3, 4]  # 0.35 beats 1+2 (0.6)
    assert choose_layers(bi, 3, consecutive=True) == [1, 2, 3]  # 0.8 beats 2..4 (0.85)
    assert choose_layers(bi, 0) == []
    assert choose_layers(bi, 5) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("depth", [6, 7, -1, 1.5, True])
def test_bad_depth_is_one_line_naming_the_field(depth):
    with pytest.raises(ValueError) as err:
        choose_layers([0.1] * 6, depth)
    msg = str(err.value)
    assert "\n" not in msg and "prune_depth" in msg and "6 layers" in msg


def test_remove_layers_rejects_removing_everything(zoo):
    model, _ = _load(zoo, "llama-a")
    with pytest.raises(ValueError, match="every layer"):
        remove_layers(model, list(range(6)))
    with pytest.raises(ValueError, match="0..5"):
        remove_layers(model, [6])


@pytest.mark.parametrize("model_id", BASES)
def test_pruned_model_saves_reloads_and_generates(zoo, texts, tmp_path, model_id):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = _load(zoo, model_id)
    types_before = list(getattr(model.config, "layer_types", None) or [])
    drop = choose_layers(block_influence(model, tok, texts), 2)
    remove_layers(model, drop)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    # transformers' logger does not propagate to caplog; its load report names MISSING/UNEXPECTED keys
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    try:
        reloaded, tok2 = AutoModelForCausalLM.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [m for m in messages if "MISSING" in m or "UNEXPECTED" in m]
    cfg = reloaded.config
    assert cfg.num_hidden_layers == 4 and len(reloaded.model.layers) == 4
    if model_id == "exaone4-c":
        kept = [t for i, t in enumerate(types_before) if i not in drop]
        assert cfg.layer_types == kept and len(cfg.layer_types) == 4
        sliding = [layer.self_attn.is_sliding for layer in reloaded.model.layers]
        assert sliding == [t == "sliding_attention" for t in kept]
    if getattr(cfg, "layer_types", None) is not None:
        assert len(cfg.layer_types) == 4

    prompt = tok2.apply_chat_template([{"role": "user", "content": "What should I cook tonight?"}],
                                      tokenize=False, add_generation_prompt=True)
    ids = tok2(prompt, return_tensors="pt")
    out = reloaded.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert tok2.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=False).strip()


class _Refuses:
    def __call__(self, *a, **k):
        raise AssertionError("the model ran although the BI scores were cached")


def test_bi_scores_are_cached_per_base_texts_and_variant(zoo, texts, tmp_path):
    model, tok = _load(zoo, "exaone4-c")
    store = LocalStore(tmp_path / "store")
    content = {"files_sha256": "exaone4-c"}
    calls = []
    hook = model.register_forward_pre_hook(lambda *a: calls.append(1))
    first = bi_scores_cached(store, "exaone4-c", model, tok, texts, "cosine", content=content)
    assert calls and len(first) == 6
    calls.clear()
    assert bi_scores_cached(store, "exaone4-c", _Refuses(), tok, texts, "cosine", content=content) == first
    # another variant or another calibration set is another key: computed again
    assert bi_scores_cached(store, "exaone4-c", model, tok, texts, "angular", content=content) != first
    assert calls
    calls.clear()
    bi_scores_cached(store, "exaone4-c", model, tok, texts[:3], "cosine", content=content)
    assert calls
    hook.remove()
    assert len(store.runs("bi", "exaone4-c")) == 3


def test_bi_scores_of_a_model_rebuilt_under_the_same_id_are_recomputed(zoo, texts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    registry = register_copy(zoo, tmp_path, "toy")
    store = LocalStore(tmp_path / "store")
    tok = AutoTokenizer.from_pretrained(tmp_path / "toy")
    first = bi_scores_cached(store, "toy", AutoModelForCausalLM.from_pretrained(tmp_path / "toy"), tok, texts[:2],
                             content=key_of(registry))
    assert bi_scores_cached(store, "toy", _Refuses(), tok, texts[:2], content=key_of(registry)) == first  # a hit
    perturb(tmp_path / "toy")  # same id, same registry entry, other weights
    rebuilt = AutoModelForCausalLM.from_pretrained(tmp_path / "toy")
    calls = []
    rebuilt.register_forward_pre_hook(lambda *a: calls.append(1))
    again = bi_scores_cached(store, "toy", rebuilt, tok, texts[:2], content=key_of(registry))
    assert calls and again != first  # a miss: the new weights were measured
    assert len(store.runs("bi", "toy")) == 2
