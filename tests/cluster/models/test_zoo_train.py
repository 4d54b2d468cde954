"""cluster/models/zoo_train.py: the corpus, the byte-level BPE tokenizer and its chat template, which tokens
are trained, tiny models of the three architectures, the training windows, a few training steps,
saving, and `train_models` in this process. Tiny sizes and a handful of steps; no assertion on a
trained float (another CPU trains slightly different ones). Whole zoo builds: tests/cluster/models/test_zoo.py."""
from __future__ import annotations

import logging
import math
import re

import pytest
import torch

from cluster.models import zoo_train
from cluster.models.zoo_train import (
    ARCHITECTURES, BOS, EOS, PAD, SPECIAL_TOKENS, Doc, build_model, count_params, count_saved_params, encode_docs,
    lora_finetune, read_corpus, save_model, train_lm, train_models, train_tokenizer,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(hidden_size=16, num_layers=3, num_heads=2, num_kv_heads=1, intermediate_size=32, sliding_window=8)
CLASSES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "exaone4": "Exaone4ForCausalLM"}
CHAT = Doc("t", chat=(("user", "Is it cold?"), ("assistant", "Yes, wear a coat."),
                      ("user", "오늘 날씨는?"), ("assistant", "맑고 따뜻해요.")))
TEXT = Doc("t", text="Rain today. 비가 와요.")


@pytest.fixture(scope="module")
def tokenizer():
    """The zoo's tokenizer, trained on one topic (seconds instead of the whole corpus)."""
    return train_tokenizer(read_corpus(["weather"]), vocab_size=600)


@pytest.fixture(scope="module")
def docs(tokenizer):
    return encode_docs(tokenizer, read_corpus(["weather"])[:6])


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- corpus --------------------------------------------------------------------------------------
def test_corpus_is_bilingual_and_shipped():
    docs = zoo_train.read_corpus()
    size = sum(p.stat().st_size for p in zoo_train.CORPUS_DIR.glob("*.txt"))
    assert 60_000 <= size <= 150_000
    text = " ".join(d.text or " ".join(c for _, c in d.chat) for d in docs)
    assert re.search(r"[가-힣]{2,}", text) and re.search(r"[A-Za-z]{4,}", text)
    assert sum(bool(d.chat) for d in docs) > 100 and sum(bool(d.text) for d in docs) > 50


def test_corpus_blocks_are_chats_or_text_and_the_digest_follows_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo_train, "CORPUS_DIR", tmp_path)
    (tmp_path / "tea.txt").write_text("U: Hot or iced?\nA:  Hot, please. \n\n\n\nGreen tea\ngrows on hills.\n\n"
                                      "U: Why?\nit is a note, not a turn\n", encoding="utf-8")
    (tmp_path / "bread.txt").write_text("A: 빵이 맛있어요.\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a topic")
    assert zoo_train.corpus_topics() == ["bread", "tea"]
    assert read_corpus(["tea"]) == [
        Doc("tea", chat=(("user", "Hot or iced?"), ("assistant", "Hot, please."))),
        Doc("tea", text="Green tea grows on hills."),
        Doc("tea", text="U: Why? it is a note, not a turn"),  # a chat block has only U:/A: lines
    ]
    assert [d.topic for d in read_corpus()] == ["bread", "tea", "tea", "tea"]
    assert read_corpus(["bread"])[0].chat == (("assistant", "빵이 맛있어요."),)
    digest = zoo_train.corpus_digest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest) and zoo_train.corpus_digest() == digest
    (tmp_path / "notes.md").write_text("still not a topic")
    assert zoo_train.corpus_digest() == digest
    (tmp_path / "bread.txt").write_text("A: 빵이 맛있어요!\n", encoding="utf-8")
    assert zoo_train.corpus_digest() != digest
    with pytest.raises(FileNotFoundError):
        read_corpus(["poetry"])


# --- tokenizer -----------------------------------------------------------------------------------
def test_tokenizer_has_the_special_tokens_and_round_trips_both_languages(tokenizer):
    assert len(tokenizer) <= 600
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS, EOS, PAD)
    for token in SPECIAL_TOKENS:
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids(token)]
    text = "Tomorrow is rainy. 내일은 비가 와요!"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_chat_template_honours_enable_thinking(tokenizer):
    messages = [{"role": "user", "content": "안녕하세요! Who are you?"}]
    plain = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    off = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    on = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert plain == off and "<think>" not in off and "think" not in off
    assert off == f"{BOS}<|im_start|>user\n안녕하세요! Who are you?{EOS}\n<|im_start|>assistant\n"
    assert on == off + "<think>\n"
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in ids


def test_only_assistant_turns_are_trained_and_plain_text_throughout(tokenizer):
    (chat_ids, chat_trained), (text_ids, text_trained) = encode_docs(tokenizer, [CHAT, TEXT])
    assert len(chat_ids) == len(chat_trained) and len(text_ids) == len(text_trained)
    assert tokenizer.decode([t for t, m in zip(chat_ids, chat_trained) if m]) == f"Yes, wear a coat.{EOS}맑고 따뜻해요.{EOS}"
    assert tokenizer.decode(chat_ids) == tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in CHAT.chat], tokenize=False)
    assert all(text_trained) and tokenizer.decode(text_ids) == f"{BOS}Rain today. 비가 와요.<|endoftext|>"


# --- models --------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_build_model_is_the_architecture_with_tied_embeddings(arch, tokenizer):
    model = build_model(arch, tokenizer, seed=0, **TINY)
    assert type(model).__name__ == CLASSES[arch]
    cfg = model.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == (len(tokenizer), 16, 3)
    assert cfg.eos_token_id == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    stored = sum(v.numel() for v in model.state_dict().values())  # lm_head and embed_tokens both listed
    assert count_params(model) == stored - len(tokenizer) * 16
    again = build_model(arch, tokenizer, seed=0, **TINY)
    assert all(torch.equal(a, b) for a, b in zip(weights(model).values(), weights(again).values()))
    other = build_model(arch, tokenizer, seed=1, **TINY)
    assert not torch.equal(weights(model)["model.embed_tokens.weight"], weights(other)["model.embed_tokens.weight"])


def test_exaone4_layers_are_local_with_every_third_and_the_last_global(tokenizer):
    model = build_model("exaone4", tokenizer, seed=0, **{**TINY, "num_layers": 5})
    assert model.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention",
                                        "sliding_attention", "full_attention"]
    assert model.config.sliding_window == 8


def test_an_unknown_architecture_is_refused(tokenizer):
    with pytest.raises(ValueError, match=r"^unknown architecture 'gpt2' \(allowed: llama, qwen3, exaone4\)$"):
        build_model("gpt2", tokenizer, seed=0, **TINY)


# --- training windows ----------------------------------------------------------------------------
def test_windows_are_slices_of_one_shuffled_stream_with_context_masked():
    from itertools import permutations

    docs = [([1, 2, 3], [False, True, True]), ([4, 5, 6, 7], [True, True, True, False]), ([8, 9], [False, False])]
    trained = {t for ids, mask in docs for t, m in zip(ids, mask) if m}
    batches = list(zoo_train._batches(docs, steps=3, batch_size=4, seq_len=4, seed=7, pad_id=0))
    assert len(batches) == 3 and all(x.shape == y.shape == (4, 4) for x, y in batches)
    rows = [row for input_ids, _ in batches for row in input_ids.tolist()]
    streams = [[t for i in order for t in docs[i][0]] for order in permutations(range(3))]
    slices = [{tuple(s[i:i + 4]) for i in range(len(s) - 3)} for s in streams]
    assert any(all(tuple(r) in windows for r in rows) for windows in slices)  # one document order for all
    for input_ids, labels in batches:
        assert labels.tolist() == [[t if t in trained else -100 for t in row] for row in input_ids.tolist()]
    again = list(zoo_train._batches(docs, steps=3, batch_size=4, seq_len=4, seed=7, pad_id=0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))


def test_a_stream_shorter_than_a_window_is_padded_and_the_padding_not_trained():
    ((input_ids, labels),) = zoo_train._batches([([7, 8], [True, True])], steps=1, batch_size=2, seq_len=4, seed=0,
                                                pad_id=0)
    assert input_ids.tolist() == [[7, 8, 0, 0]] * 2 and labels.tolist() == [[7, 8, -100, -100]] * 2


# --- training and saving -------------------------------------------------------------------------
def test_train_lm_changes_the_weights_returns_a_loss_and_logs_progress(tokenizer, docs, caplog):
    caplog.set_level(logging.INFO, logger="cluster.models.zoo_train")
    model = build_model("llama", tokenizer, seed=0, **TINY)
    before = weights(model)
    loss = train_lm(model, docs, steps=3, lr=1e-2, batch_size=2, seq_len=16, seed=0, label="tiny", warmup_steps=1)
    assert math.isfinite(loss) and loss > 0 and not model.training
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], model.state_dict()["model.layers.0.mlp.up_proj.weight"])
    assert any(r.getMessage().startswith("training tiny 3/3 steps") for r in caplog.records)


def test_lora_finetune_merges_into_a_plain_model_of_the_parents_class(tokenizer, docs):
    model = build_model("qwen3", tokenizer, seed=0, **TINY)
    before, n = weights(model), count_params(model)
    merged, loss = lora_finetune(model, docs, rank=2, steps=2, lr=1e-2, batch_size=2, seq_len=16, seed=0, label="kid")
    assert type(merged).__name__ == "Qwen3ForCausalLM" and math.isfinite(loss)
    after = weights(merged)
    assert set(after) == set(before) and not any("lora" in k for k in after) and count_params(merged) == n
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])  # not a LoRA target


def test_save_model_writes_a_standard_hf_dir_that_loads_back(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = build_model("exaone4", tokenizer, seed=0, **TINY)
    save_model(model, tokenizer, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert count_saved_params(tmp_path) == count_params(model)  # the tied head is stored once
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "Exaone4ForCausalLM"
    assert loaded.generation_config.eos_token_id == model.config.eos_token_id
    assert loaded.generation_config.pad_token_id == tokenizer.pad_token_id
    assert torch.equal(loaded.state_dict()["lm_head.weight"], model.state_dict()["lm_head.weight"])
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": "비 와요?"}]
    for thinking in (False, True):
        assert reloaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                            enable_thinking=thinking) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
    assert count_saved_params(tmp_path / "nothing-here") == 0


# --- train_models (in this process) --------------------------------------------------------------
def specs(child_parent: str = "base"):
    from cluster.models.zoo import BaseSpec, ChildSpec

    base = BaseSpec(name="base", arch="llama", hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                    intermediate_size=16, corpus=["weather"], steps=2)
    kid = ChildSpec(name="kid", parent=child_parent, derivation="lora_merged", corpus=["food"], steps=1, lora_rank=2)
    return base, kid


def test_train_models_trains_parents_first_and_installs_each_model(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "_tokenizer")
    installed = []

    def install(tmp, final):
        installed.append((tmp.name, final.name, (tmp / "model.safetensors").is_file()))
        tmp.rename(final)

    threads = torch.get_num_threads()
    # workers=2, but the kid waits for its parent: one at a time, in this process (no spawned worker)
    out = train_models(list(specs()), zoo_dir=tmp_path, tokenizer_dir=tmp_path / "_tokenizer", workers=2,
                       seed_of=lambda s: 0, batch_size=2, seq_len=16, install=install)
    assert installed == [(".base.tmp-base", "base", True), (".kid.tmp-kid", "kid", True)]
    assert set(out) == {"base", "kid"} and out["base"][0] == out["kid"][0] == count_saved_params(tmp_path / "kid")
    assert all(math.isfinite(loss) for _, loss in out.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_tokenizer", "base", "kid"]
    assert torch.get_num_threads() == threads


def test_a_failed_model_stops_the_build_and_leaves_no_temp_dir(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "_tokenizer")
    (tmp_path / "ghost").mkdir()  # a parent dir without a model in it
    _, kid = specs(child_parent="ghost")
    with pytest.raises(ValueError, match="ghost"):  # transformers: no model in that dir
        train_models([kid], zoo_dir=tmp_path, tokenizer_dir=tmp_path / "_tokenizer", workers=1, seed_of=lambda s: 0,
                     batch_size=2, seq_len=16, install=lambda tmp, final: tmp.rename(final))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_tokenizer", "ghost"]
