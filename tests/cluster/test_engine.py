"""The engine choice (`engine: hf | vllm`): validation, one-line refusals, selection, provenance,
and real-size random-weight shapes.

vLLM itself cannot run here (no CUDA GPU, and it is an optional extra): its paths run on the GPU
machine through tests/bench/bench_vllm_dna.py (BENCHMARKS.md, "GPU: vLLM engine"). Where a test
below needs "vLLM is installed" on this machine, it says so and patches only that answer.
"""
import json

import pytest

from actors.config import DnaConfig
from actors.planner import node_kinds_from_ray, plan_hosts
from cluster import engine as engine_mod
from cluster.config import ConfigError, load_config
from cluster.engine import EngineConfig, EngineUnavailable, check_engine
from cluster.registry import ModelRegistry, ModelSpec


def test_engine_is_one_field_given_as_a_name_or_with_settings(tmp_path):
    assert EngineConfig.model_validate("vllm").name == "vllm"
    cfg = EngineConfig.model_validate({"name": "vllm", "vllm": {"enforce_eager": True, "max_num_seqs": 64}})
    assert cfg.vllm.enforce_eager and cfg.vllm.max_num_seqs == 64
    # the same type in the DNA job (engine:) and the sweep (eval.engine:)
    from tune.config import EvalConfig

    assert EvalConfig.model_fields["engine"].annotation is EngineConfig
    assert DnaConfig.model_fields["engine"].annotation is EngineConfig


@pytest.mark.parametrize("text, field", [
    ("engine: vlm\n", "engine"),
    ("engine: {name: vllm, vllm: {gpu_memory_utilization: 1.5}}\n", "engine.vllm.gpu_memory_utilization"),
    ("engine: {name: vllm, vllm: {gpu_memory_util: 0.5}}\n", "engine.vllm.gpu_memory_util"),
])
def test_a_bad_engine_field_is_one_line_naming_file_and_field(tmp_path, text, field):
    path = tmp_path / "dna.yaml"
    path.write_text("kind: dna\n" + text)
    with pytest.raises(ConfigError) as err:
        load_config(path, DnaConfig)
    line = str(err.value)
    assert "\n" not in line and str(path) in line and field in line


def test_vllm_is_refused_in_one_line_where_it_is_not_installed():
    # this machine has no vllm (an optional extra): the real answer, nothing patched
    assert engine_mod.vllm_version() is None
    check_engine(EngineConfig(), "engine")  # hf runs everywhere
    with pytest.raises(EngineUnavailable) as err:
        check_engine(EngineConfig(name="vllm"), "eval.engine", source="sweep.yaml")
    line = str(err.value)
    assert "\n" not in line and line.startswith("sweep.yaml: eval.engine: vllm is not installed")
    assert "0.26 with torch 2.11" in line


def test_vllm_is_refused_in_one_line_where_there_is_no_gpu(monkeypatch):
    # pretend vllm is installed (it is not, here); the GPU count is this machine's real one: 0
    monkeypatch.setattr(engine_mod, "vllm_version", lambda: "0.26.0")
    with pytest.raises(EngineUnavailable, match=r"^engine: vllm needs a CUDA GPU and there is none here"):
        check_engine(EngineConfig(name="vllm"), "engine")
    check_engine(EngineConfig(name="vllm"), "engine", gpus=1)  # a Ray cluster with a GPU: accepted


def test_yard_dna_with_vllm_exits_2_before_any_work(zoo, tmp_path, capsys):
    from cluster.cli import main as yard
    from actors.dna_job import DEMO_CONFIG

    store = tmp_path / "store"
    code = yard(["dna", str(DEMO_CONFIG), "zoo=null", f"registry=[{zoo.registry_path}]", f"storage.uri={store}",
                 "engine=vllm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "engine: vllm is not installed" in err[0] and str(DEMO_CONFIG) in err[0]
    assert not (store / "jobs").exists()  # nothing started


def ray_node(cpus, gpus=0, accel=None):
    res = {"CPU": cpus, "memory": 64 * 2**30}
    if gpus:
        res.update({"GPU": gpus, f"accelerator_type:{accel}": 1})
    return {"Alive": True, "Resources": res}


def test_the_planner_gives_vllm_hosts_whole_gpus_and_refuses_cpu_nodes():
    reg = ModelRegistry({m: ModelSpec(source="org/m", params_b=1.2) for m in ("a", "b", "c")}
                        | {"big": ModelSpec(source="org/m", params_b=70, num_gpus=2)})
    cpu = plan_hosts(["a"], reg, node_kinds_from_ray([ray_node(8)]), engine="vllm")
    assert cpu.rejected == {"a": "model a: no node can run it (cpu: engine vllm needs a CUDA GPU)"}
    hf = plan_hosts(["a", "b", "c"], reg, node_kinds_from_ray([ray_node(16, 1, "H200")]), max_hosts=3)
    assert all(h.num_gpus < 1 for h in hf.hosts)  # hf: small models side by side on the GPU
    gpu = plan_hosts(["a", "b", "c", "big"], reg, node_kinds_from_ray([ray_node(32, 2, "H200")]), max_hosts=3,
                     engine="vllm")
    assert all(h.num_gpus >= 1 for h in gpu.hosts) and gpu.rejected == {}
    (big,) = [h for h in gpu.hosts if h.models == ["big"]]
    assert big.num_gpus == 2 and big.device_map == "vLLM tensor_parallel=2"


def test_vectors_of_different_engines_are_not_compared_unless_the_user_says_so():
    from actors.fingerprint import ProvenanceError, check_comparable, make_provenance

    hf = make_provenance(DnaConfig(), "ab" * 32, "enc")
    vllm = make_provenance(DnaConfig(engine="vllm"), "ab" * 32, "enc")
    assert hf["engine"] == "hf" and vllm["engine"] == "vllm" and vllm["engine_version"].startswith("vllm")
    with pytest.raises(ProvenanceError, match="engine differs \\('hf' vs 'vllm'\\)"):
        check_comparable({"a": hf, "b": vllm})
    check_comparable({"a": hf, "b": vllm}, ignore=("engine",))
    old = {k: v for k, v in hf.items() if k not in ("engine", "engine_version")}  # stored before engines
    check_comparable({"a": hf, "old": old})


# --- real-size shapes ---------------------------------------------------------------------------
def test_shapes_have_their_published_parameter_counts():
    from cluster.shapes import shape_params

    # EXAONE-4.0-1.2B (tied embeddings), Qwen3-8B, Llama-3.1-8B: counts from their model cards
    assert shape_params("exaone-4.0-1.2b") == pytest.approx(1.279e9, rel=0.002)
    assert shape_params("qwen3-8b") == pytest.approx(8.19e9, rel=0.002)
    assert shape_params("llama-3.1-8b") == pytest.approx(8.03e9, rel=0.002)
    with pytest.raises(ConfigError, match="unknown"):
        shape_params("gpt-9")


def test_the_padded_tokenizer_decodes_every_id_of_the_vocabulary():
    from cluster.shapes import padded_tokenizer

    tok = padded_tokenizer(102400)
    assert len(tok) == 102400
    assert tok.decode([102399]).strip() == "<pad_102399>"
    ids = tok("What is the capital of France?")["input_ids"]
    assert 3 <= len(ids) < 20 and max(ids) < 4096  # real merges, not padding
    assert tok.eos_token == "<|im_end|>" and "assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


def test_a_shape_is_built_registered_and_loaded_like_any_model(tmp_path, monkeypatch):
    from cluster import shapes
    from cluster.loading import load_model

    # a real architecture at toy width, so the build runs here in seconds
    tiny = shapes.Shape("qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(
        vocab_size=5000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, tie_word_embeddings=False), "test")
    monkeypatch.setitem(shapes.SHAPES, "tiny-qwen3", tiny)
    spec = shapes.build_shape("tiny-qwen3", tmp_path, seed=1)
    spec2 = shapes.build_shape("tiny-qwen3", tmp_path, seed=2, model_id="other")
    reg = ModelRegistry.load([tmp_path / "models.yaml"])
    assert reg.ids() == ["other", "tiny-qwen3-shape"]
    assert spec.family == "qwen3" and spec.params_b == spec2.params_b and "random weights" in spec.notes
    model, tok, plan = load_model("tiny-qwen3-shape", reg)
    assert model.config.vocab_size == len(tok) == 5000
    out = model.generate(**tok(["hello"], return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > 1
    cfg = json.loads((tmp_path / "tiny-qwen3-shape" / "config.json").read_text())
    assert cfg["eos_token_id"] == tok.eos_token_id


def test_engine_signature_allows_a_swap_only_for_the_same_shape_tokenizer_and_settings(tmp_path):
    import shutil

    from cluster.engine_vllm import engine_signature

    a = tmp_path / "a"
    a.mkdir()
    (a / "config.json").write_text(json.dumps({"_name_or_path": "a", "hidden_size": 64, "num_hidden_layers": 2}))
    (a / "tokenizer.json").write_text('{"vocab": 1}')
    (a / "generation_config.json").write_text('{"eos_token_id": 2}')
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "config.json").write_text(json.dumps({"_name_or_path": "b", "hidden_size": 64, "num_hidden_layers": 2}))
    args = dict(dtype="bfloat16", num_gpus=1)
    assert engine_signature(str(a), **args) == engine_signature(str(b), **args)  # another checkpoint, same shape
    assert engine_signature(str(a), **args) != engine_signature(str(a), dtype="float16", num_gpus=1)
    (b / "generation_config.json").write_text('{"eos_token_id": 3}')
    assert engine_signature(str(a), **args) != engine_signature(str(b), **args)  # stops elsewhere
    (b / "generation_config.json").write_text('{"eos_token_id": 2}')
    (b / "tokenizer.json").write_text('{"vocab": 2}')
    assert engine_signature(str(a), **args) != engine_signature(str(b), **args)  # reads prompts differently
    (b / "tokenizer.json").write_text('{"vocab": 1}')
    (b / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 3}))
    assert engine_signature(str(a), **args) != engine_signature(str(b), **args)  # another shape
    (b / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2,
                                               "quantization_config": {"quant_method": "compressed-tensors"}}))
    assert engine_signature(str(b), **args) is None  # quantized kernels repack at load: never swapped
    assert engine_signature("org/hf-id", **args) is None  # not a local folder
