"""The explicit load decision: quantization x device_map x dtype from the registry, and
rejections before any weight is read."""
import pytest

from cluster.models.loading import LoadError, decide_load, load_model
from cluster.models.registry import ModelRegistry, ModelSpec
from cluster.node import NodeFacts

CPU = NodeFacts(hostname="laptop", cuda=False, cpu_mem_gib=16.0, cpu_count=2)
L40S = NodeFacts(hostname="g7e", cuda=True, gpu_names=("NVIDIA L40S",), cuda_capabilities=(8.9,), gpu_mem_gib=(44.4,))
H100x4 = NodeFacts(hostname="p5", cuda=True, gpu_names=("H100",) * 4, cuda_capabilities=(9.0,) * 4, gpu_mem_gib=(79.1,) * 4)


def spec(**kw):
    return ModelSpec(**{"source": "org/model", "params_b": 1.0, **kw})


def test_cpu_bf16_computes_in_fp32_on_plain_cpu_load():
    plan = decide_load("m", spec(load_in="bf16"), CPU)
    assert (plan.dtype, plan.device_map, plan.quantization) == ("float32", None, "none")
    assert any("float32" in r for r in plan.reasons)


def test_single_gpu_pins_one_device_and_keeps_dtype():
    plan = decide_load("m", spec(load_in="fp16"), L40S)
    assert (plan.dtype, plan.device_map) == ("float16", {"": 0})


def test_multi_gpu_gets_device_map_auto():
    plan = decide_load("big", spec(params_b=70.6, num_gpus=4), H100x4)
    assert plan.device_map == "auto"


def test_4bit_is_explicit_and_quantizes_only_when_asked():
    assert decide_load("m", spec(params_b=32.8, load_in="4bit"), L40S).quantization == "4bit"
    # a big bf16 model is never silently switched to 8-bit: it is rejected for memory instead
    with pytest.raises(LoadError, match="needs ~"):
        decide_load("m", spec(params_b=32.8, load_in="bf16"), L40S)


@pytest.mark.parametrize(
    "kw, node, match",
    [
        (dict(load_in="4bit"), CPU, "model m: load_in 4bit needs a CUDA GPU"),
        (dict(load_in="8bit"), CPU, "model m: load_in 8bit needs a CUDA GPU"),
        (dict(min_cuda_capability=9.0), L40S, r"model m: needs compute capability >= 9.0; g7e has NVIDIA L40S \(cc 8.9\)"),
        (dict(min_cuda_capability=9.0), CPU, "model m: needs a CUDA GPU with compute capability >= 9.0"),
        (dict(num_gpus=8), H100x4, "model m: needs 8 GPUs; p5 has 4"),
        (dict(params_b=20.0, load_in="fp32"), CPU, r"model m: needs ~93.1 GiB .* laptop has 16.0 GiB of CPU RAM"),
    ],
)
def test_impossible_loads_are_rejected_with_one_line(kw, node, match):
    with pytest.raises(LoadError, match=match) as e:
        decide_load("m", spec(**kw), node)
    assert "\n" not in str(e.value)


def test_rejection_happens_before_any_weight_is_read(tmp_path, monkeypatch):
    import transformers

    calls = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: calls.append(a))
    reg = ModelRegistry({"q": spec(source=str(tmp_path / "missing"), load_in="4bit")})
    with pytest.raises(LoadError, match="load_in 4bit needs a CUDA GPU"):
        load_model("q", reg, CPU)
    assert calls == []


def test_missing_local_path_is_a_clear_error(tmp_path):
    reg = ModelRegistry({"gone": spec(source=str(tmp_path / "nowhere"))})
    with pytest.raises(LoadError, match=r"model gone: local path .*nowhere does not exist"):
        load_model("gone", reg, CPU)


def test_shipped_registry_loads_and_every_entry_has_an_explicit_decision_on_a_big_gpu_node():
    from pathlib import Path

    reg = ModelRegistry.load([Path(__file__).resolve().parents[3] / "configs" / "models.yaml"])
    H200x8 = NodeFacts(hostname="h", cuda=True, gpu_names=("H200",) * 8, cuda_capabilities=(9.0,) * 8, gpu_mem_gib=(139.8,) * 8)
    for mid in reg.ids():
        plan = decide_load(mid, reg.get(mid), H200x8)
        assert plan.device_map == ("auto" if reg.get(mid).num_gpus > 1 else {"": 0})


def test_a_model_process_loads_and_generates_without_importing_sklearn(zoo):
    """skip_unused_sklearn: a fresh process that loads a zoo model through load_model and generates
    never imports scikit-learn, scipy.stats, scipy.optimize or pandas (1.7 CPU-s of every model
    process's start). import_sentence_transformers, as a DNA host imports it, then adds neither
    sklearn nor scipy.stats (1.1-1.4 CPU-s more of a host's start); the one sklearn function
    sentence-transformers binds at import still works: it imports the real package on first call."""
    import subprocess
    import sys

    code = (
        "import sys; from cluster.models.loading import load_model, import_sentence_transformers\n"
        "from cluster.models.registry import ModelRegistry\n"
        f"model, tok, _ = load_model('llama-a', ModelRegistry.load([{str(zoo.registry_path)!r}]))\n"
        "out = model.generate(**tok('hello', return_tensors='pt'), max_new_tokens=4, do_sample=False)\n"
        "skipped = ('sklearn', 'scipy.stats', 'scipy.optimize', 'pandas')\n"
        "print(out.shape[1] > 1, sorted(m for m in skipped if m in sys.modules))\n"
        "st = import_sentence_transformers()\n"
        "print('sklearn' in sys.modules, 'scipy.stats' in sys.modules)\n"
        "import numpy as np; from sentence_transformers.util import similarity\n"
        "d = similarity.pairwise_distances(np.array([[0.0, 1.0]]), np.array([[2.0, 3.0]]), metric='manhattan')\n"
        "import sklearn; print(float(d[0][0]), sklearn.__file__ is not None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-3:] == ["True []", "False False", "4.0 True"]


def _tiny_checkpoint(folder, shape_name):
    """A shipped shape at toy width, saved as `yard zoo shape` saves it (safetensors, config.json)."""
    import torch
    import transformers

    from cluster.models.shapes import SHAPES

    shape = SHAPES[shape_name]
    small = dict(vocab_size=512, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16)
    if "layer_types" in shape.config:
        small["layer_types"] = ["full_attention"] * 2
    if "num_experts" in shape.config:
        small.update(num_experts=4, num_experts_per_tok=2, num_key_value_heads=4)
    cfg = getattr(transformers, shape.config_class)(**{**shape.config, **small})
    torch.manual_seed(0)
    getattr(transformers, shape.model_class)(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("shape_name", ["exaone-4.0-1.2b", "qwen3-1.7b", "llama-3.1-8b", "olmoe-1b-7b"])
def test_a_checkpoint_whose_config_disagrees_with_its_weights_is_caught_from_the_headers(tmp_path, shape_name):
    """check_checkpoint (run before a vLLM engine starts): the round's broken copy (a config whose
    hidden size does not match its weights) fails in a second, naming a tensor, on every shipped
    architecture, the mixture of experts included; a whole checkpoint passes."""
    import json

    from cluster.models.loading import CheckpointMismatch, check_checkpoint

    folder = _tiny_checkpoint(tmp_path / "m", shape_name)
    check_checkpoint("m", str(folder))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "hidden_size": 80}))
    with pytest.raises(CheckpointMismatch, match=r"model m: .*tensor\(s\) do not match config.json, e\.g\. .*: "
                                                   r"\[.*64.*\] in the weights, \[.*80.*\] by the config"):
        check_checkpoint("m", str(folder))
    # a quantized checkpoint's shapes are packed: not judged
    (folder / "config.json").write_text(json.dumps({**cfg, "hidden_size": 80, "quantization_config": {"x": 1}}))
    check_checkpoint("m", str(folder))


def test_a_truncated_or_incomplete_checkpoint_is_caught_and_retried_not_failed(tmp_path):
    import json

    from actors.host import FAILED_TYPES
    from cluster.models.loading import CheckpointMismatch, check_checkpoint

    folder = _tiny_checkpoint(tmp_path / "m", "qwen3-1.7b")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])  # a copy cut short
    with pytest.raises(CheckpointMismatch, match=rf"model m: .*model.safetensors: truncated \({len(data) - 100:,} of "
                                                  rf"{len(data):,} bytes\)"):
        check_checkpoint("m", str(folder))
    weights.write_bytes(data[:5])
    with pytest.raises(CheckpointMismatch, match="truncated .*no whole header"):
        check_checkpoint("m", str(folder))
    garbled = b'{"w": {"dtype": "BF16"}}'  # a header without shapes or offsets
    weights.write_bytes(len(garbled).to_bytes(8, "little") + garbled)
    with pytest.raises(CheckpointMismatch, match=r"model m: .*model.safetensors: unreadable header \(KeyError"):
        check_checkpoint("m", str(folder))
    weights.write_bytes(data)
    (folder / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointMismatch, match=r"model m: .*model.safetensors.index.json: unreadable \(JSONDecodeError"):
        check_checkpoint("m", str(folder))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(CheckpointMismatch, match="1 of 2 shards missing \\(first: model-00002-of-00002.safetensors\\)"):
        check_checkpoint("m", str(folder))
    # a copy may still be arriving: the host retries it once, then skips it as the same error twice
    assert not isinstance(CheckpointMismatch("x"), FAILED_TYPES)
    check_checkpoint("m", str(tmp_path / "not-a-folder"))  # a hub id: the engine judges
