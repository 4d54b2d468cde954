"""Run llama.cpp's `convert_hf_to_gguf.py` on a model whose byte-level BPE tokenizer it has never
seen (a tokenizer trained for the model, like the toy zoo's).

    python tune/persona/gguf_convert.py LLAMA_CPP_DIR MODEL_DIR --outfile OUT.gguf --outtype q8_0

llama.cpp names a BPE tokenizer's pre-tokenizer by hashing how it tokenizes a fixed text, and
refuses a hash it does not list (`BPE pre-tokenizer was not recognized`): a new vocabulary always
gives a new hash. Where the model's `tokenizer.json` declares exactly GPT-2's pre-tokenizer
(ByteLevel with GPT-2's regex, no normalizer), this runner answers "gpt-2" for the unknown hash,
which is what llama.cpp's own update script would register for it; any other tokenizer keeps
llama.cpp's refusal. Everything else is llama.cpp's converter, unchanged.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def gpt2_pretokenizer(model_dir: str | Path) -> bool:
    """True when the tokenizer is byte-level BPE with GPT-2's pre-tokenizer and no normalizer."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return False
    tok = json.loads(path.read_text(encoding="utf-8"))
    pre = tok.get("pre_tokenizer") or {}
    return ((tok.get("model") or {}).get("type") == "BPE" and tok.get("normalizer") is None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) is True)


def main(argv: list[str]) -> int:
    llama_dir, model_dir, rest = Path(argv[0]), argv[1], argv[2:]
    sys.path[:0] = [str(llama_dir), str(llama_dir / "gguf-py")]
    import convert_hf_to_gguf
    from conversion import base

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if gpt2_pretokenizer(model_dir):
                return "gpt-2"
            raise

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = ["convert_hf_to_gguf.py", model_dir, *rest]
    convert_hf_to_gguf.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
