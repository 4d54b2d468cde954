"""cluster/capacity/quotas.py: the AWS preflight against moto's server over HTTP (boto3 is not patched).

moto serves EC2's instance type offerings per region from its own data. Its Service Quotas API
implements only VPC quotas, so the EC2 vCPU quotas a test needs are put into moto's backend (the
server's side): boto3 still asks for them over HTTP exactly as it asks AWS."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.capacity.launch import ClusterConfig, write_cluster_config
from cluster.capacity.quotas import QUOTA_CODES, QuotaError, needs, preflight
from cluster.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def quotas(monkeypatch, s3_server):
    """EC2 quota values (by code) served by moto; returns (values dict to fill, endpoint URL)."""
    from moto.servicequotas.exceptions import NoSuchResource
    from moto.servicequotas.models import ServiceQuotasBackend

    values: dict[str, float] = {}

    def get_service_quota(self, service_code, quota_code):
        if service_code == "ec2" and quota_code in values:
            return {"ServiceCode": "ec2", "QuotaCode": quota_code, "QuotaName": quota_code,
                    "Value": values[quota_code], "Unit": "None", "Adjustable": True, "GlobalQuota": False}
        raise NoSuchResource

    monkeypatch.setattr(ServiceQuotasBackend, "get_service_quota", get_service_quota)
    return values, s3_server


def _cfg(tmp_path, **fields) -> ClusterConfig:
    reg = tmp_path / "models.yaml"
    reg.write_text(yaml.safe_dump({"kind": "models", "models": {
        "moe": {"source": "org/moe", "family": "other", "params_b": 3.0, "load_in": "bf16", "min_cuda_capability": 9.0},
        "small": {"source": "org/small", "family": "other", "params_b": 1.0, "load_in": "bf16"}}}))
    body = {"kind": "cluster", "name": "q", "registry": [str(reg)], "install": {"pip": "modelyard"},
            "instance_types": ["p5.48xlarge", "g6.xlarge"], "max_workers": 2, **fields}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(body))
    return load_config(str(path), ClusterConfig)


GROUPS = {"p5.48xlarge": ["moe"], "g6.xlarge": ["small"]}
P_SPOT, P_OD = QUOTA_CODES["P", "spot"][0], QUOTA_CODES["P", "on_demand"][0]
G_SPOT, G_OD = QUOTA_CODES["G", "spot"][0], QUOTA_CODES["G", "on_demand"][0]


def test_needs_per_family_and_market(tmp_path):
    got = {(n.family, n.market): (n.one_node, n.all_nodes) for n in needs(_cfg(tmp_path, max_on_demand_workers=1), GROUPS)}
    assert got == {("P", "spot"): (192, 384), ("P", "on_demand"): (192, 192),
                   ("G", "spot"): (4, 8), ("G", "on_demand"): (4, 4)}


def test_zero_spot_and_on_demand_quota_refuses_naming_quota_value_and_region(tmp_path, quotas):
    values, endpoint = quotas
    values.update({P_SPOT: 0, P_OD: 0, G_SPOT: 64, G_OD: 64})
    with pytest.raises(QuotaError) as exc:
        preflight(_cfg(tmp_path), GROUPS, endpoint_url=endpoint)
    msg = str(exc.value)
    assert msg == f"us-west-2: quota 'All P Spot Instance Requests' ({P_SPOT}) is 0 vCPUs; a p5.48xlarge spot node needs 192"


def test_spot_at_zero_falls_back_to_on_demand_with_a_warning(tmp_path, quotas):
    values, endpoint = quotas
    values.update({P_SPOT: 0, P_OD: 192, G_SPOT: 64, G_OD: 64})
    notes = preflight(_cfg(tmp_path), GROUPS, endpoint_url=endpoint)
    assert any("All P Spot Instance Requests" in n and "on-demand groups will carry" in n for n in notes)
    assert any("room for 1 p5.48xlarge node(s) of the 2" in n for n in notes)  # on-demand: one node, not two
    with pytest.raises(QuotaError, match="All P Spot Instance Requests"):  # spot only: nothing to fall back on
        preflight(_cfg(tmp_path, market="spot"), GROUPS, endpoint_url=endpoint)


def test_a_type_not_offered_in_the_region_is_refused(tmp_path, quotas):
    values, endpoint = quotas
    cfg = _cfg(tmp_path, provider={"region": "us-west-2"})
    with pytest.raises(QuotaError, match=r"^us-west-2: p9.huge not offered in this region"):
        preflight(cfg, {**GROUPS, "p9.huge": ["x"]}, endpoint_url=endpoint)


def test_unknown_quotas_are_noted_not_refused(tmp_path, quotas):
    _, endpoint = quotas  # no values: moto answers NoSuchResource for every EC2 quota
    notes = preflight(_cfg(tmp_path), GROUPS, endpoint_url=endpoint)
    assert len(notes) == 4 and all("unknown; not checked" in n for n in notes)


def test_cli_refuses_before_writing_and_writes_when_there_is_room(tmp_path, quotas):
    values, endpoint = quotas
    values.update({P_SPOT: 0, P_OD: 0, G_SPOT: 0, G_OD: 0})
    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError) as exc:  # the config file, then the quota, its value and the region
        write_cluster_config(cfg, tmp_path / "out", quotas="check", endpoint_url=endpoint)
    assert str(exc.value).startswith(f"{cfg.config_file}: us-west-2: quota 'All P Spot Instance Requests'")
    assert not (tmp_path / "out").exists()
    values.update({P_SPOT: 1000, P_OD: 1000, G_SPOT: 1000, G_OD: 1000})
    paths, notes = write_cluster_config(cfg, tmp_path / "out", quotas="check", endpoint_url=endpoint)
    assert notes == ["us-west-2: every instance type offered; quotas have room for every group"]
    assert "Preflight:" in paths["placement"].read_text()


def test_cli_without_credentials_says_quotas_were_not_checked(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.run([sys.executable, "-m", "cluster", "cluster", "config", "configs/cluster.example.yaml",
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "preflight: AWS quotas not checked: no AWS credentials here" in proc.stdout
