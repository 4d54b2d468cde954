"""tune/persona/gguf_convert.py: which tokenizers the runner names "gpt-2" for llama.cpp's converter
(the conversion itself runs in tests/tune/persona/test_gguf.py)."""
import json

from tune.persona.gguf_convert import gpt2_pretokenizer

GPT2 = {"model": {"type": "BPE"}, "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}


def test_a_gpt2_byte_level_tokenizer_is_named(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps(GPT2))
    assert gpt2_pretokenizer(tmp_path)


def test_a_tokenizer_that_is_not_gpt2_keeps_llama_cpps_refusal(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({**GPT2, "normalizer": {"type": "NFC"}}))
    assert not gpt2_pretokenizer(tmp_path)
    assert not gpt2_pretokenizer(tmp_path / "none")


def test_another_pre_tokenizer_is_not_named(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({**GPT2, "pre_tokenizer": {"type": "Metaspace"}}))
    assert not gpt2_pretokenizer(tmp_path)
