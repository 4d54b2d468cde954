"""The engine choice (`engine: hf | vllm`): validation, one-line refusals, selection, provenance.
(Real-size shapes: test_shapes.py; the vLLM engine's swap rule: test_engine_vllm.py.)

vLLM itself cannot run here (no CUDA GPU, and it is an optional extra): its paths run on the GPU
machine through tests/bench/bench_vllm_dna.py (BENCHMARKS.md, "GPU: vLLM engine"). Where a test
below needs "vLLM is installed" on this machine, it says so and patches only that answer.
"""

import pytest

from actors.config import DnaConfig
from actors.planner import node_kinds_from_ray, plan_hosts
from cluster.config import ConfigError, load_config
from cluster.engines import engine as engine_mod
from cluster.engines.engine import EngineConfig, EngineUnavailable, check_engine
from cluster.models.registry import ModelRegistry, ModelSpec


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
