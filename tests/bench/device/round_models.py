"""The issue-26 round's extra models, made from shapes `yard zoo shape` built (random weights):

    python3 tests/bench/device/round_models.py eos SHAPES_DIR SRC_ID NEW_ID
        a copy of SRC_ID whose every reply is EOS at once (greedy): the sublayers write nothing
        into the residual stream, the final norm keeps one dimension, and the (tied) embedding
        makes EOS the largest logit along it. The sanity gate must stop it before extraction.
    python3 tests/bench/device/round_models.py broken SHAPES_DIR SRC_ID NEW_ID
        SRC_ID's weights (hard links, no disk) under a config whose hidden size does not match
        them: a checkpoint that fails to load every time (the job stops after two attempts).
    python3 tests/bench/device/round_models.py encoder OUT_DIR
        a sentence encoder of all-MiniLM-L6-v2's shape (BERT, 6 layers, 384 wide, random
        weights, mean pooling): the offline default's cost where its package is not installed.

Each model is registered in SHAPES_DIR/models.yaml like the shapes themselves.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path


def _copy_small_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy2(f, dst / f.name)


def _register_copy(shapes: Path, src_id: str, new_id: str, note: str) -> None:
    from cluster.config import load_config
    from cluster.models.registry import ModelsFile
    from cluster.models.shapes import _register

    spec = load_config(shapes / "models.yaml", ModelsFile).models[src_id]
    _register(shapes, new_id, spec.model_copy(update={"source": f"./{new_id}", "lineage_family": new_id,
                                                      "notes": f"{note} (from {src_id})"}))


def eos_model(shapes: Path, src_id: str, new_id: str) -> None:
    from safetensors.torch import load_file, save_file

    src, dst = shapes / src_id, shapes / new_id
    _copy_small_files(src, dst)
    eos = json.loads((src / "config.json").read_text())["eos_token_id"]
    eos = eos[0] if isinstance(eos, list) else eos
    for f in sorted(src.glob("*.safetensors")):
        tensors = load_file(str(f))
        for name, t in tensors.items():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                t.zero_()  # attention and MLP add nothing: the residual stream is the token's embedding
            elif name == "model.norm.weight":
                t.zero_()
                t[0] = 1  # the final norm keeps dimension 0 only
            elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
                t[:, 0] = 1  # dimension 0 is positive for every token ...
                t[eos, 0] = 2  # ... so EOS, twice as large along it, is every step's argmax
        save_file(tensors, str(dst / f.name), metadata={"format": "pt"})
    _register_copy(shapes, src_id, new_id, "answers EOS at once")
    print(f"{new_id}: EOS ({eos}) at every step")


def broken_model(shapes: Path, src_id: str, new_id: str) -> None:
    src, dst = shapes / src_id, shapes / new_id
    _copy_small_files(src, dst)
    for f in src.glob("*.safetensors"):
        os.link(f, dst / f.name)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["hidden_size"] = cfg["hidden_size"] + 512  # the weights no longer fit the architecture
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    _register_copy(shapes, src_id, new_id, "fails to load: config does not match the weights")
    print(f"{new_id}: hidden_size {cfg['hidden_size']} against {cfg['hidden_size'] - 512}-wide weights")


def encoder(out: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel

    from cluster.models.shapes import padded_tokenizer

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(out)
    padded_tokenizer(cfg.vocab_size).save_pretrained(out)
    print(f"{out}: MiniLM-L6-shaped encoder, random weights")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="the issue-26 round's extra models (see the module docstring)")
    sub = parser.add_subparsers(dest="what", required=True)
    for name, help_ in (("eos", "a copy that answers EOS at once"), ("broken", "a copy that never loads")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("shapes", type=Path, help="the shapes folder (its models.yaml registers the copy)")
        p.add_argument("src_id")
        p.add_argument("new_id")
    enc = sub.add_parser("encoder", help="a MiniLM-L6-shaped sentence encoder, random weights")
    enc.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.what == "encoder":
        encoder(args.out)
    else:
        (eos_model if args.what == "eos" else broken_model)(args.shapes, args.src_id, args.new_id)


if __name__ == "__main__":
    main()
