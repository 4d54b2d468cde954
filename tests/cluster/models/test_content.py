"""Content keys: a model rebuilt under the same id gets a new key; an unchanged one the same."""
import shutil
from pathlib import Path

import pytest
import yaml

import cluster.models.content as content
from cluster.models.content import dir_sha256, model_content_key
from cluster.models.loading import decide_load
from cluster.models.registry import ModelRegistry, ModelSpec
from cluster.node import NodeFacts

CPU = NodeFacts(hostname="test", cuda=False, cpu_mem_gib=8.0)
GPU = NodeFacts(hostname="gpu", cuda=True, gpu_names=("H200",), cuda_capabilities=(9.0,), gpu_mem_gib=(139.0,))


def register_copy(zoo, tmp_path: Path, model_id: str = "toy", of: str = "llama-a", **fields) -> ModelRegistry:
    """A copy of a zoo model registered as `model_id` in a models.yaml of its own."""
    shutil.copytree(Path(zoo.zoo_dir) / of, tmp_path / model_id, dirs_exist_ok=True)
    entry = {"source": f"./{model_id}", "params_b": 0.001, "family": "llama", "dtype": "fp32", **fields}
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"kind": "models", "models": {model_id: entry}}))
    return ModelRegistry.load([tmp_path / "models.yaml"])


def perturb(model_dir: Path) -> None:
    """Rebuild in place: the same files, one decoder layer's weights changed (as retraining would)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    name = next(n for n in sorted(tensors) if "layers.0.mlp.down_proj" in n)
    tensors[name] = tensors[name] + 0.05 * torch.randn(tensors[name].shape, generator=torch.Generator().manual_seed(0))
    save_file(tensors, path, metadata={"format": "pt"})


def key_of(registry: ModelRegistry, model_id: str = "toy", node: NodeFacts = CPU) -> dict:
    spec = registry.get(model_id)
    return model_content_key(spec, decide_load(model_id, spec, node))


def test_rebuilt_model_under_the_same_id_gets_a_new_key(zoo, tmp_path):
    registry = register_copy(zoo, tmp_path)
    first = key_of(registry)
    assert first["source_kind"] == "local" and len(first["files_sha256"]) == 64
    assert key_of(registry) == first  # nothing changed: the same key
    perturb(tmp_path / "toy")
    assert key_of(ModelRegistry.load([tmp_path / "models.yaml"]))["files_sha256"] != first["files_sha256"]


def test_key_is_the_content_not_the_path_or_id(zoo, tmp_path):
    a = key_of(register_copy(zoo, tmp_path / "a", "one"), "one")
    b = key_of(register_copy(zoo, tmp_path / "b", "two"), "two")
    other = key_of(register_copy(zoo, tmp_path / "c", "three", of="qwen3-b"), "three")
    assert a == b and a["files_sha256"] != other["files_sha256"]


def test_a_changed_tokenizer_or_config_file_changes_the_key(zoo, tmp_path):
    register_copy(zoo, tmp_path)
    before = dir_sha256(tmp_path / "toy")
    (tmp_path / "toy" / "notes.md").write_text("not read by from_pretrained")
    (tmp_path / "toy" / ".complete").write_text("ok")
    assert dir_sha256(tmp_path / "toy") == before
    tok = tmp_path / "toy" / "tokenizer_config.json"
    tok.write_text(tok.read_text().replace("{", '{"model_max_length": 7, ', 1))
    assert dir_sha256(tmp_path / "toy") != before


def test_files_are_hashed_once_per_process(zoo, tmp_path, monkeypatch):
    register_copy(zoo, tmp_path)
    dir_sha256(tmp_path / "toy")
    opened = []
    monkeypatch.setattr(content, "open", lambda *a, **k: opened.append(a[0]) or open(*a, **k), raising=False)
    dir_sha256(tmp_path / "toy")
    assert opened == []  # memoized by (path, size, mtime)
    perturb(tmp_path / "toy")
    dir_sha256(tmp_path / "toy")
    assert [Path(p).name for p in opened] == ["model.safetensors"]  # only the rewritten file is read again


def test_load_settings_are_part_of_the_key(zoo, tmp_path):
    registry = register_copy(zoo, tmp_path)
    bf16 = key_of(registry)
    fp32 = key_of(register_copy(zoo, tmp_path, load_in="fp32"))
    assert bf16["files_sha256"] == fp32["files_sha256"] and bf16 != fp32
    assert bf16["device"] == "cpu" and key_of(registry, node=GPU)["device"] == "cuda"
    assert key_of(registry, node=GPU)["compute_dtype"] == "bfloat16" != bf16["compute_dtype"]


@pytest.mark.parametrize("source", ["org/some-model", "s3://bucket/models/some-model"])
def test_remote_sources_are_keyed_by_source_and_revision_without_reading(source):
    spec = ModelSpec(source=source, revision="abc123", params_b=1.0)
    key = model_content_key(spec, decide_load("m", spec, CPU))
    assert key["source"] == source and key["revision"] == "abc123" and "files_sha256" not in key
    other = spec.model_copy(update={"revision": "def456"})
    assert model_content_key(other, decide_load("m", other, CPU)) != key


def test_a_folder_without_model_files_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model files"):
        dir_sha256(tmp_path)


def test_a_later_process_reads_digests_from_the_digest_file_not_the_weights(zoo, tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    import time

    register_copy(zoo, tmp_path)
    weights = tmp_path / "toy" / "model.safetensors"
    time.sleep(content._RACY_S + 0.1)  # a file written this recently is not kept on disk: let it settle
    cache = tmp_path / "digests.jsonl"
    env = {**os.environ, content.DIGEST_CACHE_ENV: str(cache)}
    code = "import sys; from cluster.models.content import dir_sha256; print(dir_sha256(sys.argv[1]))"
    first = subprocess.run([sys.executable, "-c", code, str(tmp_path / "toy")], env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert str(weights.resolve()) in cache.read_text()
    # this process: an empty memo, the same digest file
    monkeypatch.setenv(content.DIGEST_CACHE_ENV, str(cache))
    monkeypatch.setattr(content, "_FILE_DIGESTS", {})
    monkeypatch.setattr(content, "_disk", None)
    opened = []
    monkeypatch.setattr(content, "open", lambda *a, **k: opened.append(Path(a[0]).name) or open(*a, **k), raising=False)
    assert content.dir_sha256(tmp_path / "toy") == first
    assert "model.safetensors" not in opened  # the weights were not read again
    perturb(tmp_path / "toy")  # rewritten just now: read again, and too recent to be kept on disk
    assert content.dir_sha256(tmp_path / "toy") != first
    assert opened.count("model.safetensors") == 1 and "digests.jsonl" not in opened
    monkeypatch.setenv(content.DIGEST_CACHE_ENV, "")  # off: nothing written
    assert content.digest_cache_path() is None
