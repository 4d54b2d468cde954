"""Batched generation on real zoo models: same greedy text as one prompt at a time, caller's
order kept, token bounds, seeded sampling, chat templates."""
import copy

import pytest

from actors.config import GenerationConfig
from actors.generation import generate_batched, generate_sequential, render_prompts
from cluster.models.loading import LoadError, load_model
from cluster.models.registry import ModelRegistry

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

# Unsorted lengths on purpose, so bucketing must reorder them and put them back.
PROMPTS = [
    "Tell me about the weather.",
    "What should I cook tonight with rice, beans and some old vegetables from the fridge?",
    "Why?",
    "Describe a walk in the forest.",
    "How do I learn to play chess well, and how long does it usually take?",
    "Name a fruit.",
]


@pytest.fixture(scope="module")
def registry(zoo):
    return ModelRegistry.load([zoo.registry_path])


@pytest.fixture(scope="module")
def llama(registry):
    model, tok, _ = load_model("llama-a", registry)
    return model, tok, render_prompts(tok, PROMPTS, registry.get("llama-a"), "llama-a")


def gen(**kw):
    return GenerationConfig(**{"max_new_tokens": 32, "min_new_tokens": 0, "batch_size": 4, **kw})


@pytest.mark.parametrize("model_id", ["llama-a", "qwen3-b", "exaone4-c"])
def test_batched_greedy_equals_sequential_greedy(registry, model_id):
    model, tok, _ = load_model(model_id, registry)
    texts = render_prompts(tok, PROMPTS, registry.get(model_id), model_id)
    batched = generate_batched(model, tok, texts, gen(max_new_tokens=40))
    sequential = generate_sequential(model, tok, texts, gen(max_new_tokens=40))
    assert batched.responses == sequential.responses
    assert batched.new_tokens == sequential.new_tokens
    assert all(len(r) > 0 for r in batched.responses)
    assert batched.prompts_per_s > 0 and batched.seconds > 0


def test_bucketing_batches_by_length_and_returns_the_callers_order(llama, monkeypatch):
    model, tok, texts = llama
    widths = []
    real_generate = model.generate

    def spy(**kw):
        widths.append([int(n) for n in kw["attention_mask"].sum(dim=1)])
        return real_generate(**kw)

    monkeypatch.setattr(model, "generate", spy)
    result = generate_batched(model, tok, texts, gen(batch_size=2))
    flat = [n for batch in widths for n in batch]
    assert flat == sorted(flat, reverse=True)  # longest first, so each batch pads little
    expected = sorted((len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts), reverse=True)
    assert flat == expected
    monkeypatch.undo()
    assert result.responses == generate_sequential(model, tok, texts, gen()).responses


def test_min_new_tokens_forces_an_answer_and_max_new_tokens_caps(llama):
    model, tok, texts = llama
    free = generate_batched(model, tok, texts, gen(max_new_tokens=44))
    early = [i for i, n in enumerate(free.new_tokens) if n < 40]
    assert early  # some prompt stops on its own (EOS) before 40 tokens
    forced = generate_batched(model, tok, texts, gen(max_new_tokens=44, min_new_tokens=40))
    assert min(forced.new_tokens) >= 40
    assert all(len(forced.responses[i]) > len(free.responses[i]) for i in early)
    capped = generate_batched(model, tok, texts, gen(max_new_tokens=8))
    assert max(capped.new_tokens) == 8 and all(n <= 8 for n in capped.new_tokens)
    assert all(len(tok(r)["input_ids"]) <= 12 for r in capped.responses)


def test_sampling_with_a_seed_repeats_and_differs_from_greedy(llama):
    model, tok, texts = llama
    sampled = gen(do_sample=True, temperature=1.5, top_p=1.0, seed=7)
    first = generate_batched(model, tok, texts, sampled)
    again = generate_batched(model, tok, texts, sampled)
    greedy = generate_batched(model, tok, texts, gen())
    assert first.responses == again.responses
    assert first.responses != greedy.responses
    other_seed = generate_batched(model, tok, texts, sampled.model_copy(update={"seed": 8}))
    assert other_seed.responses != first.responses


def test_on_batch_reports_each_batch_and_can_stop_the_generation(llama):
    model, tok, texts = llama
    calls = []

    def on_batch(done, total, seconds):
        calls.append((done, total))
        if done >= 4:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        generate_batched(model, tok, texts, gen(batch_size=2, max_new_tokens=4), on_batch=on_batch)
    assert calls == [(2, 6), (4, 6)]  # the third batch never ran


def test_render_prompts_uses_the_template_raw_prompts_or_names_the_model(llama, registry):
    _, tok, texts = llama
    assert texts[0] == tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], tokenize=False,
                                               add_generation_prompt=True, enable_thinking=False)
    assert PROMPTS[0] in texts[0] and texts[0] != PROMPTS[0]
    assert render_prompts(tok, PROMPTS, registry.get("llama-a"), "llama-a", use_chat_template=False) == PROMPTS
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(LoadError, match=r"^model llama-a: tokenizer has no chat template"):
        render_prompts(bare, PROMPTS, registry.get("llama-a"), "llama-a")
