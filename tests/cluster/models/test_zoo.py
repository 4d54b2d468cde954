"""The toy zoo: real architectures that answer chat prompts, lineage in the registry, caching,
safe writes, config errors and `yard zoo`. The demo zoo is built once per cache (tests/plugins/zoo.py);
everything else here uses a tiny 1-base zoo in tmp_path that trains for a few steps. The corpus,
tokenizer, chat template and training helpers: test_zoo_train.py."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from cluster.config import ConfigError, load_config
from cluster.models import zoo_train
from cluster.models.registry import ModelRegistry
from cluster.models.zoo import ZooConfig, build_zoo, default_zoo_config, register_child, unregister, zoo_cached
from cluster.models.zoo_cli import list_zoo

CLASSES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "exaone4": "Exaone4ForCausalLM"}
PROMPTS = ["Tell me about the weather today.", "오늘 날씨는 어때요?"]
WORD = re.compile(r"[A-Za-z]{2,}|[가-힣]{2,}")


def tiny_zoo_data(zoo_dir: Path, steps: int = 6) -> dict:
    """One small llama base and a LoRA child: seconds to build."""
    return {
        "kind": "zoo",
        "zoo_dir": str(zoo_dir),
        "tokenizer": {"vocab_size": 600},
        "seq_len": 32,
        "batch_size": 2,
        "bases": [{"name": "base", "arch": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 2,
                   "num_kv_heads": 1, "intermediate_size": 64, "corpus": ["weather"], "steps": steps}],
        "children": [{"name": "kid", "parent": "base", "derivation": "lora_merged", "corpus": ["food"],
                      "steps": 2, "lora_rank": 2}],
    }


def tiny_cfg(zoo_dir: Path, **kwargs) -> ZooConfig:
    return ZooConfig.model_validate(tiny_zoo_data(zoo_dir, **kwargs))


def weights_digest(model_dir: Path) -> str:
    import hashlib
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


# --- the demo zoo ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_zoo_model_loads_plainly_and_answers_with_real_text(zoo):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = list_zoo(zoo.zoo_dir)
    assert {r["architecture"] for r in rows} == set(CLASSES)
    for row in rows:
        tokenizer = AutoTokenizer.from_pretrained(row["path"])
        model = AutoModelForCausalLM.from_pretrained(row["path"])
        assert type(model).__name__ == CLASSES[row["architecture"]], row["id"]
        for prompt in PROMPTS:
            inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                   return_tensors="pt", return_dict=True)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=64, do_sample=False)
            text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            # a tiny model's answer length depends on floating-point detail (another CPU trains a
            # slightly different zoo): ask for real words, not for a length only some builds reach
            assert len(text) >= 20, (row["id"], prompt, text)
            assert len(set(WORD.findall(text))) >= 4, (row["id"], prompt, text)


def test_exaone4_base_uses_hybrid_sliding_attention(zoo):
    from transformers import AutoConfig

    by_arch = {r["architecture"]: r for r in list_zoo(zoo.zoo_dir) if r["derivation"] == "base"}
    config = AutoConfig.from_pretrained(by_arch["exaone4"]["path"])
    assert config.num_hidden_layers >= 6
    assert config.sliding_window < 128 and config.layer_types[-1] == "full_attention"
    assert {"sliding_attention", "full_attention"} == set(config.layer_types)


def test_registry_validates_and_records_lineage(zoo):
    registry = ModelRegistry.load([zoo.registry_path])
    assert registry.ids() == sorted(zoo.models) and len(zoo.models) == 9
    bases = {mid for mid, spec in registry.models.items() if spec.derivation == "base"}
    assert len(bases) == 3
    for mid, spec in registry.models.items():
        assert Path(spec.source).is_dir() and spec.source_kind == "local"
        assert (spec.dtype, spec.load_in, spec.chat_template_kwargs) == ("fp32", "bf16", {"enable_thinking": False})
        assert 1e-4 < spec.params_b < 1e-2 and spec.notes
        if mid in bases:
            assert spec.parent is None and spec.lineage_family == mid
        else:
            assert spec.derivation in ("continued", "lora_merged")
            assert spec.parent in bases and spec.lineage_family == spec.parent == registry.family_of(mid)
            assert spec.family == registry.get(spec.parent).family
            # a child is trained, not a copy of its parent
            assert weights_digest(Path(spec.source)) != weights_digest(Path(registry.get(spec.parent).source))
    assert {s.derivation for s in registry.models.values()} == {"base", "continued", "lora_merged"}


def test_second_demo_build_is_a_cache_hit(zoo):
    started = time.monotonic()
    again = build_zoo(default_zoo_config().model_copy(update={"zoo_dir": str(zoo.zoo_dir)}))
    assert again.cache_hit and again.built == [] and again.models == zoo.models
    assert time.monotonic() - started < 10


# --- caching and safe writes (tiny zoo) -------------------------------------------------------------
def test_build_caches_rebuilds_missing_models_and_rebuilds_on_change(tmp_path):
    assert not zoo_cached(tiny_cfg(tmp_path))  # nothing built yet
    first = build_zoo(tiny_cfg(tmp_path))
    assert not first.cache_hit and first.built == ["base", "kid"]
    lock = json.loads((tmp_path / "zoo.lock.json").read_text())
    kid_weights = weights_digest(tmp_path / "kid")

    # how many models train at once is not part of the key: each trains on one thread
    assert zoo_cached(tiny_cfg(tmp_path)) and zoo_cached(tiny_cfg(tmp_path).model_copy(update={"num_threads": 3}))
    hit = build_zoo(tiny_cfg(tmp_path))
    assert hit.cache_hit and hit.built == []

    import shutil
    shutil.rmtree(tmp_path / "kid")
    assert not zoo_cached(tiny_cfg(tmp_path))  # what build_zoo would repair
    repaired = build_zoo(tiny_cfg(tmp_path))
    assert not repaired.cache_hit and repaired.built == ["kid"]
    assert weights_digest(tmp_path / "kid") == kid_weights  # same seed, same weights

    changed = build_zoo(tiny_cfg(tmp_path, steps=7))
    assert not changed.cache_hit and changed.built == ["base", "kid"]
    assert json.loads((tmp_path / "zoo.lock.json").read_text())["hash"] != lock["hash"]
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


def test_crash_mid_build_leaves_no_half_model_and_no_lock(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(zoo_train, "lora_finetune", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_zoo(tiny_cfg(tmp_path))
    assert (tmp_path / "base" / "model.safetensors").is_file()
    assert not (tmp_path / "kid").exists() and not (tmp_path / "zoo.lock.json").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    monkeypatch.undo()
    assert build_zoo(tiny_cfg(tmp_path)).built == ["base", "kid"]


def test_register_child_adds_lineage_and_survives_a_cache_hit(tmp_path, capsys):
    import shutil

    from tests.plugins.zoo import only_the_zoos_own

    build_zoo(tiny_cfg(tmp_path))
    shutil.copytree(tmp_path / "kid", tmp_path / "kid-pruned")
    spec = register_child(tmp_path, "kid-pruned", tmp_path / "kid-pruned", "kid", "pruned", notes="dropped no layers")
    assert spec.source == "./kid-pruned" and spec.lineage_family == "base" and spec.family == "llama"
    row = {r["id"]: r for r in list_zoo(tmp_path)}["kid-pruned"]
    assert (row["parent"], row["derivation"], row["family"]) == ("kid", "pruned", "base")
    assert row["params"] == {r["id"]: r for r in list_zoo(tmp_path)}["kid"]["params"]
    assert ModelRegistry.load([tmp_path / "models.yaml"]).family_of("kid-pruned") == "base"
    assert "kid-pruned" in build_zoo(tiny_cfg(tmp_path)).models  # cache hit keeps it

    with pytest.raises(ConfigError, match="parent: 'nope': unknown model"):
        register_child(tmp_path, "x", tmp_path / "kid", "nope", "pruned")
    with pytest.raises(ConfigError, match="already registered"):
        register_child(tmp_path, "kid-pruned", tmp_path / "kid", "kid", "pruned")
    with pytest.raises(ConfigError, match="derivation"):
        register_child(tmp_path, "y", tmp_path / "kid", "kid", "sharpened")

    # the test session's zoo fixture: a child left registered in the shared zoo is unregistered and named
    build = only_the_zoos_own(build_zoo(tiny_cfg(tmp_path)), tiny_cfg(tmp_path))
    assert "kid-pruned" not in build.models and build.cache_hit and (tmp_path / "kid-pruned" / "config.json").is_file()
    assert "kid-pruned was registered in the shared zoo (dropped no layers)" in capsys.readouterr().err
    assert unregister(tmp_path, ["kid-pruned", "kid-nope"]) == {}  # nothing left to remove


# --- bad config ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("edit", "where", "says"), [
    (lambda d: d["children"][0].update(parent="nope"), "children.0.parent: 'nope'", "unknown parent"),
    (lambda d: d["bases"][0].update(arch="gpt2"), "bases.0.arch: 'gpt2'", "'llama', 'qwen3' or 'exaone4'"),
    (lambda d: d["children"][0].update(name="base"), "children.0.name: 'base'", "duplicate model name"),
    (lambda d: d["bases"][0].update(corpus=["weather", "poetry"]), "bases.0.corpus", "unknown corpus topic 'poetry'"),
    (lambda d: d["bases"][0].update(num_heads=3), "bases.0", "not divisible by num_heads 3"),
    (lambda d: d.update(colour="red"), "colour", "unknown field"),
])
def test_bad_zoo_config_is_one_line_naming_the_field(tmp_path, edit, where, says):
    data = tiny_zoo_data(tmp_path / "zoo")
    edit(data)
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: {where}") and says in message
