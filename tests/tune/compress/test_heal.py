import copy
from pathlib import Path

import pytest
import torch

from tune.compress.heal import HealArgumentError, lora_heal
from tune.compress.prune import remove_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

CORPUS = Path(__file__).resolve().parents[3] / "cluster" / "models" / "zoo_corpus"
BASES = ["llama-a", "qwen3-b", "exaone4-c"]
PROMPT = "U: What should I cook for dinner tonight?"


@pytest.fixture(scope="module")
def texts():
    # food + weather: what llama-a learned, so a layer-pruned llama-a has something to recover
    lines = []
    for topic in ("food", "weather"):
        lines += [ln for ln in (CORPUS / f"{topic}.txt").read_text(encoding="utf-8").splitlines() if ln.strip()][:4]
    return lines


def _load(zoo, model_id):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = zoo.zoo_dir / model_id
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def llama(zoo):
    return _load(zoo, "llama-a")


def _logits(model, tok):
    with torch.no_grad():
        return model(**tok(PROMPT, return_tensors="pt")).logits


@pytest.fixture(scope="module")
def healed(llama, texts):
    """A layer-pruned llama-a healed with rank 4: (before, model, stats, shapes before, rng states)."""
    base, tok = llama
    model = remove_layers(copy.deepcopy(base), [2, 3])
    model.model.embed_tokens.weight.requires_grad_(False)  # a caller's frozen parameter stays frozen
    model.train()
    shapes = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    before = _logits(model, tok)
    rng = torch.get_rng_state()
    out, stats = lora_heal(model, tok, texts, rank=4, steps=12, lr=3e-3, max_length=48, batch_size=4)
    return before, model, out, stats, shapes, rng, torch.get_rng_state()


def test_heal_loss_falls_and_stats_are_complete(healed):
    _, _, _, stats, _, _, _ = healed
    assert set(stats) == {"heal_loss_first", "heal_loss_last", "steps", "trainable_params", "seconds"}
    assert stats["steps"] == 12 and stats["seconds"] > 0
    # rank 4 on q,k,v,o,gate,up,down of 4 layers: rank * layers * sum(in + out) = 4 * 4 * 1728
    assert stats["trainable_params"] == 4 * 4 * (96 * 2 + (96 + 48) * 2 + (96 + 96) + (96 + 256) * 2 + (256 + 96))
    assert stats["heal_loss_last"] < stats["heal_loss_first"] - 0.2


def test_merged_model_is_plain_transformers_with_same_keys(healed):
    _, model, out, _, shapes, rng_before, rng_after = healed
    assert out is model and type(out).__name__ == "LlamaForCausalLM"
    assert not any("lora" in name or "base_layer" in name for name, _ in out.named_modules())
    assert not any(type(m).__module__.startswith("peft") for m in out.modules())
    assert not hasattr(out, "peft_config")
    assert {k: (v.shape, v.dtype) for k, v in out.state_dict().items()} == shapes
    assert not out.training
    assert not out.model.embed_tokens.weight.requires_grad  # frozen before, frozen after
    assert all(p.requires_grad and p.grad is None for n, p in out.named_parameters() if "embed" not in n)
    assert torch.equal(rng_before, rng_after)  # the caller's RNG did not move


def test_merged_model_changed_and_reloads_with_identical_logits(healed, llama, tmp_path):
    from transformers import AutoModelForCausalLM

    before, _, out, _, _, _, _ = healed
    tok = llama[1]
    after = _logits(out, tok)
    assert not torch.allclose(after, before, atol=1e-4)
    out.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert reloaded.config.num_hidden_layers == 4
    assert torch.equal(_logits(reloaded, tok), after)


@pytest.mark.parametrize("model_id", ["qwen3-b", "exaone4-c"])
def test_merge_works_for_every_architecture(zoo, texts, tmp_path, model_id):
    from transformers import AutoModelForCausalLM

    model, tok = _load(zoo, model_id)
    keys = {k: v.shape for k, v in model.state_dict().items()}
    out, stats = lora_heal(model, tok, texts[:2], rank=2, steps=1, lr=1e-2, max_length=32)
    assert type(out) is type(model) and {k: v.shape for k, v in out.state_dict().items()} == keys
    assert stats["heal_loss_last"] != stats["heal_loss_first"]
    out.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert torch.equal(_logits(reloaded, tok), _logits(out, tok))


def test_rank_zero_is_a_noop(llama, texts):
    model, tok = llama
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    out, stats = lora_heal(model, tok, texts, rank=0)
    assert out is model
    assert stats["heal_loss_first"] is None and stats["heal_loss_last"] is None and stats["steps"] == 0
    assert all(torch.equal(weights[k], v) for k, v in out.state_dict().items())


def test_same_seed_same_result(llama, texts):
    base, tok = llama
    runs = [lora_heal(copy.deepcopy(base), tok, texts[:2], rank=2, steps=2, lr=1e-2, max_length=24, seed=7)
            for _ in range(2)]
    assert runs[0][1]["heal_loss_last"] == runs[1][1]["heal_loss_last"]


@pytest.mark.parametrize("kwargs, field", [
    ({"rank": -1}, "lora_rank"), ({"rank": 2.0}, "lora_rank"), ({"rank": True}, "lora_rank"),
    ({"rank": "8"}, "lora_rank"), ({"rank": 4, "steps": 0}, "steps"), ({"rank": 4, "lr": 0}, "lr"),
    ({"rank": 4, "lr": -1e-4}, "lr"), ({"rank": 4, "lr": float("nan")}, "lr"), ({"rank": 4, "alpha": 0}, "alpha"),
    ({"rank": 4, "dropout": 1.0}, "dropout"), ({"rank": 4, "batch_size": 0}, "batch_size"),
    ({"rank": 4, "max_length": -3}, "max_length"),
])
def test_bad_args_are_one_line_naming_the_argument(llama, texts, kwargs, field):
    model, tok = llama
    with pytest.raises(ValueError) as err:
        lora_heal(model, tok, texts, **kwargs)
    msg = str(err.value)
    assert isinstance(err.value, HealArgumentError)
    assert msg.startswith(f"{field}:") and "\n" not in msg


@pytest.mark.parametrize("bad_texts", [[], ["", "   "], "a single string"])
def test_empty_texts_rejected_even_for_rank_zero(llama, bad_texts):
    model, tok = llama
    with pytest.raises(HealArgumentError, match="^texts:"):
        lora_heal(model, tok, bad_texts, rank=0)


def test_failed_training_leaves_a_plain_unchanged_model(llama, texts, monkeypatch):
    base, tok = llama
    model = copy.deepcopy(base)
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    def broken_step(self, closure=None):
        raise RuntimeError("optimizer exploded")

    monkeypatch.setattr(torch.optim.AdamW, "step", broken_step)
    with pytest.raises(RuntimeError, match="optimizer exploded"):
        lora_heal(model, tok, texts[:2], rank=2, steps=1, max_length=24)
    assert not any(type(m).__module__.startswith("peft") for m in model.modules())
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in weights.items()}
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters()) and not model.training
