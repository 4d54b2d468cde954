"""`yard cluster config`: worker groups chosen from the models' needs, a launcher YAML that passes
Ray's own validation, a KubeRay manifest, and one-line refusals (exit 2) before anything is written."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.config import ConfigError, load_config
from cluster.capacity.launch import (INSTANCES, ClusterConfig, check_kuberay, choose_instance, kuberay_manifest,
                            launcher_config, plan_groups, validate_launcher, write_cluster_config)
from cluster.models.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[3]

MODELS = {
    "small": {"source": "org/small", "family": "other", "params_b": 1.0, "dtype": "bf16", "load_in": "bf16"},
    "hopper-moe": {"source": "org/moe", "family": "other", "params_b": 3.0, "dtype": "bf16", "load_in": "bf16",
                   "min_cuda_capability": 9.0},
    "big": {"source": "org/big", "family": "other", "params_b": 70.0, "dtype": "bf16", "load_in": "bf16", "num_gpus": 4},
}


def _setup(tmp_path: Path, **fields) -> ClusterConfig:
    reg = tmp_path / "models.yaml"
    reg.write_text(yaml.safe_dump({"kind": "models", "models": MODELS}))
    body = {"kind": "cluster", "name": "t", "registry": [str(reg)], "install": {"pip": "modelyard @ git+https://x/y"},
            **fields}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(body))
    return load_config(str(path), ClusterConfig)


def test_each_model_gets_the_smallest_instance_that_runs_it(tmp_path):
    cfg = _setup(tmp_path)
    reg = ModelRegistry.load(cfg.registry_paths())
    assert choose_instance("small", reg.get("small"), ["g6.xlarge", "p5.48xlarge"]).name == "g6.xlarge"
    # compute capability 9.0: the one-GPU Hopper type, not a cheaper Ada one
    assert choose_instance("hopper-moe", reg.get("hopper-moe"), list(INSTANCES)).accelerator in ("H100", "H200", "B200")
    groups = plan_groups(cfg, reg)
    big_type = next(name for name, ids in groups.items() if "big" in ids)
    assert INSTANCES[big_type].gpus >= 4
    assert sorted(m for ids in groups.values() for m in ids) == sorted(MODELS)


def test_a_model_nothing_runs_is_refused_naming_it(tmp_path):
    cfg = _setup(tmp_path, instance_types=["g6.xlarge"], models=["small", "hopper-moe"])
    with pytest.raises(ConfigError, match=r"models: hopper-moe needs 1 GPU\(s\).*compute capability >= 9.0"):
        plan_groups(cfg, ModelRegistry.load(cfg.registry_paths()))


def test_launcher_passes_rays_validation_with_spot_and_on_demand_groups(tmp_path):
    cfg = _setup(tmp_path, max_on_demand_workers=1)
    paths, notes = write_cluster_config(cfg, tmp_path / "out", quotas="skip")
    assert notes == ["AWS quotas not checked (--quotas skip)"]
    launcher = yaml.safe_load(paths["launcher"].read_text())
    validate_launcher(launcher)  # Ray's prepare_config + validate_config, as `ray up` runs them
    types = launcher["available_node_types"]
    spot = [t for t in types.values() if t["node_config"].get("InstanceMarketOptions") == {"MarketType": "spot"}]
    on_demand = [name for name, t in types.items() if name != "head" and "InstanceMarketOptions" not in t["node_config"]]
    assert spot and len(on_demand) == len(spot)
    assert all(types[name]["max_workers"] == 1 for name in on_demand)
    setup = "\n".join(launcher["setup_commands"])
    assert "pip install -q 'modelyard @ git+https://x/y'" in setup and "HF_HOME" in setup
    assert "| g6.xlarge | 1 | L4 | small |" in paths["placement"].read_text()


def test_rays_validation_refuses_a_broken_launcher_config(tmp_path):
    cfg = _setup(tmp_path)
    launcher = launcher_config(cfg, plan_groups(cfg, ModelRegistry.load(cfg.registry_paths())))
    launcher["available_node_types"]["head"]["max_workers"] = "many"
    with pytest.raises(ConfigError, match="Ray's validation failed"):
        validate_launcher(launcher)


def test_kuberay_manifest_has_gpu_groups_and_rejects_bad_names(tmp_path):
    cfg = _setup(tmp_path, market="spot")
    manifest = kuberay_manifest(cfg, plan_groups(cfg, ModelRegistry.load(cfg.registry_paths())))
    check_kuberay(manifest)
    groups = manifest["spec"]["workerGroupSpecs"]
    assert manifest["kind"] == "RayCluster" and groups
    for g in groups:
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] >= 1
        assert g["template"]["spec"]["nodeSelector"]["eks.amazonaws.com/capacityType"] == "SPOT"
    groups[0]["groupName"] = "Not_DNS"
    with pytest.raises(ConfigError, match="groupName"):
        check_kuberay(manifest)


def test_cli_refuses_bad_input_in_one_line_before_writing(tmp_path):
    cfg = _setup(tmp_path)
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "cluster", "cluster", "config", cfg.config_file,
                           "instance_types=[g7.huge]", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cluster.yaml: instance_types" in lines[0] and "g7.huge" in lines[0]
    assert not out.exists()


def test_example_config_writes_all_three_files(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cluster", "cluster", "config", "configs/cluster.example.yaml",
                           "--out", str(tmp_path), "--quotas", "skip"], cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"cluster.yaml", "raycluster.yaml", "PLACEMENT.md"}
