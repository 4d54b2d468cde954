"""`yard cluster config CONFIG [--out DIR]`: a Ray cluster for the registry's models, written as
Ray's cluster launcher YAML for AWS (`ray up`) and a KubeRay `RayCluster` manifest (`kubectl apply`).

    kind: cluster
    name: yard-gpu
    provider: {region: us-west-2, availability_zone: "us-west-2a,us-west-2b"}
    registry: [configs/models.yaml]       # the models the cluster must run (zoo: works too)
    models: []                            # a subset of them; empty: every registered model
    market: spot_with_fallback            # spot | on_demand | spot_with_fallback
    max_workers: 4                        # per worker group
    install: {pip: "modelyard @ git+https://github.com/ORG/modelyard@v0.3"}   # or {image: ...}

GPU worker groups come from the models' needs (GPUs, compute capability, memory at the model's
precision: `cluster.models.loading.expected_memory_gib` with headroom) and `cluster.capacity.instances.INSTANCES`
(AWS GPU instance types and their accelerators, `cluster.capacity.gpus.ACCELERATORS`): each model gets the
smallest instance type that runs it (fewest GPUs, then least memory per GPU), and each chosen type
one group. With `spot_with_fallback` every type has a spot group and an on-demand group (cap it
with `max_on_demand_workers`); Ray's autoscaler passes over a node type whose launch failed in the
last 30 minutes (its node availability tracker), so on-demand nodes come up where spot capacity is
not there, though Ray does not promise to try spot first. Workers install modelyard (setup
commands, or an image) and put the Hugging Face cache on the instance's NVMe disk where the Deep
Learning AMI mounts one. The launcher YAML passes Ray's own `prepare_config` and `validate_config`
(its JSON schema) before it is written; the RayCluster manifest is checked for the fields KubeRay
requires (its CRD schema is not available offline).

Then: `ray up cluster.yaml`, `ray dashboard cluster.yaml` (or `ray attach`), and
`RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- yard dna configs/dna.yaml`.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator, model_validator

from cluster.capacity.instances import INSTANCES, Instance, worker_groups
from cluster.capacity.quotas import preflight
from cluster.config import ConfigError, JobConfig, YardModel, job_config, job_parser, naming_source

HEADROOM = 1.2  # memory a model needs beyond its weights' estimate (KV cache, activations)
NVME_HF_CACHE = "/opt/dlami/nvme/huggingface"  # where AWS's Deep Learning AMI mounts instance NVMe


class ProviderConfig(YardModel):
    region: str = "us-west-2"
    availability_zone: str | None = Field(None, description="comma-separated zones, tried in order")


class InstallConfig(YardModel):
    pip: str | None = Field(None, description="what `pip install` takes to install modelyard on a node")
    image: str | None = Field(None, description="a container image with modelyard installed")

    @model_validator(mode="after")
    def _one(self):
        if not (self.pip or self.image):
            raise ValueError("give pip (a requirement that installs modelyard) or image")
        return self


class HeadConfig(YardModel):
    instance_type: str = "m5.2xlarge"
    disk_gb: int = Field(200, ge=50)


class ClusterConfig(JobConfig):
    kind: Literal["cluster"] = "cluster"
    name: str = Field("yard", pattern=r"^[a-z][a-z0-9-]{0,39}$")
    provider: ProviderConfig = Field(default_factory=ProviderConfig)
    models: list[str] = Field(default_factory=list, description="registry ids to place; empty: all")
    instance_types: list[str] = Field(default_factory=list, description="allowed types; empty: all of INSTANCES")
    market: Literal["spot", "on_demand", "spot_with_fallback"] = "spot_with_fallback"
    max_workers: int = Field(4, ge=1, description="nodes per worker group at most")
    max_on_demand_workers: int | None = Field(None, ge=0, description="on-demand fallback nodes at most")
    worker_disk_gb: int = Field(500, ge=50)
    head: HeadConfig = Field(default_factory=HeadConfig)
    install: InstallConfig
    hf_cache: str = Field(NVME_HF_CACHE, description="HF cache on the instance disk (home cache when absent)")

    @field_validator("instance_types")
    @classmethod
    def _types(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in INSTANCES:
                raise ValueError(f"{name!r} is not a known GPU instance type (known: {', '.join(INSTANCES)})")
        return names


def choose_instance(model_id: str, spec, allowed: list[str]) -> Instance:
    """The smallest allowed instance type that runs `spec` (fewest GPUs, then least memory per
    GPU, then fewest vCPUs); ConfigError naming the model and its needs when none does."""
    from cluster.models.loading import expected_memory_gib

    need_gib = expected_memory_gib(spec) * HEADROOM
    fits = [i for i in (INSTANCES[n] for n in allowed)
            if i.gpus >= spec.num_gpus and i.gib_per_gpu * spec.num_gpus >= need_gib
            and (spec.min_cuda_capability is None or i.capability >= spec.min_cuda_capability)]
    if not fits:
        cc = f", compute capability >= {spec.min_cuda_capability}" if spec.min_cuda_capability else ""
        raise ConfigError(f"models: {model_id} needs {spec.num_gpus} GPU(s) with {need_gib:.0f} GiB in all{cc}; "
                          f"no allowed instance type has that")
    return min(fits, key=lambda i: (i.gpus, i.gib_per_gpu, i.vcpus))


def plan_groups(cfg: ClusterConfig, registry) -> dict[str, list[str]]:
    """Instance type -> the models placed on it, in registry order."""
    ids = cfg.models or list(registry.models)
    for i, mid in enumerate(ids):
        if mid not in registry.models:
            raise ConfigError(f"models.{i}: {mid!r} is not in the registry ({', '.join(sorted(registry.models))})")
    allowed = cfg.instance_types or list(INSTANCES)
    groups: dict[str, list[str]] = {}
    for mid in ids:
        groups.setdefault(choose_instance(mid, registry.get(mid), allowed).name, []).append(mid)
    return groups


def _setup_commands(cfg: ClusterConfig) -> list[str]:
    cache = cfg.hf_cache
    cmds = [f'd={cache}; parent=$(dirname "$d"); [ -d "$parent" ] || d="$HOME/.cache/huggingface"; '
            'sudo mkdir -p "$d" && sudo chown "$USER" "$d" && '
            'grep -q "^export HF_HOME=" ~/.bashrc || echo "export HF_HOME=$d" >> ~/.bashrc']
    if cfg.install.pip and not cfg.install.image:
        cmds.append(f"pip install -q '{cfg.install.pip}'")
    return cmds


def _group_name(inst: Instance, market: str) -> str:
    return f"{inst.name.replace('.', '-')}-{market.replace('_', '')}"  # e.g. g6e-xlarge-ondemand


def _node(instance_type: str, disk_gb: int, spot: bool) -> dict:
    node = {"InstanceType": instance_type, "ImageId": "latest_dlami",
            "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": disk_gb, "VolumeType": "gp3"}}]}
    if spot:
        node["InstanceMarketOptions"] = {"MarketType": "spot"}
    return node


def launcher_config(cfg: ClusterConfig, groups: dict[str, list[str]]) -> dict:
    """Ray's cluster launcher config for AWS, one worker group per (instance type, market)."""
    types = {"head": {"node_config": _node(cfg.head.instance_type, cfg.head.disk_gb, False), "resources": {},
                      "min_workers": 0, "max_workers": 0}}
    for inst, market, cap in worker_groups(cfg, groups):
        types[_group_name(inst, market)] = {"node_config": _node(inst.name, cfg.worker_disk_gb, market == "spot"),
                                            "resources": {}, "min_workers": 0, "max_workers": cap}
    config = {
        "cluster_name": cfg.name,
        "max_workers": sum(t["max_workers"] for t in types.values()),
        "idle_timeout_minutes": 10,
        "provider": {"type": "aws", "region": cfg.provider.region, "cache_stopped_nodes": False,
                     **({"availability_zone": cfg.provider.availability_zone} if cfg.provider.availability_zone else {})},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": types,
        "head_node_type": "head",
        "file_mounts": {},
        "setup_commands": _setup_commands(cfg),
        "head_start_ray_commands": ["ray stop", "ulimit -n 65536; ray start --head --port=6379 "
                                    "--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=0.0.0.0"],
        "worker_start_ray_commands": ["ray stop", "ulimit -n 65536; ray start --address=$RAY_HEAD_IP:6379"],
    }
    if cfg.install.image:
        config["docker"] = {"image": cfg.install.image, "container_name": "yard", "pull_before_run": True,
                            "run_options": ["--ulimit nofile=65536:65536", f"-v {cfg.hf_cache}:{cfg.hf_cache}",
                                            f"-e HF_HOME={cfg.hf_cache}"]}
    return config


def validate_launcher(config: dict) -> dict:
    """Ray's own checks of a launcher config (`ray up` runs the same): defaults filled in, then its
    JSON schema and node-type rules. Returns the prepared config; ConfigError with Ray's reason."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except Exception as exc:  # jsonschema.ValidationError, ValueError: Ray's message is the reason
        reason = getattr(exc, "message", None) or str(exc).strip().splitlines()[0]
        raise ConfigError(f"cluster launcher config: Ray's validation failed: {reason}") from None
    return prepared


def kuberay_manifest(cfg: ClusterConfig, groups: dict[str, list[str]]) -> dict:
    """A KubeRay RayCluster with one worker group per (instance type, capacity type); the image
    must hold modelyard (`install.image`, else Ray's GPU image and a pip runtime env at submit)."""
    image = cfg.install.image or "rayproject/ray:2.60.0-py312-gpu"
    env = [{"name": "HF_HOME", "value": "/hf-cache"}]
    mounts, volumes = [{"name": "hf-cache", "mountPath": "/hf-cache"}], [{"name": "hf-cache", "emptyDir": {}}]
    workers = []
    for inst, market, cap in worker_groups(cfg, groups):
        limits = {"nvidia.com/gpu": inst.gpus, "cpu": max(1, inst.vcpus - 2)}
        workers.append({
            "groupName": _group_name(inst, market), "replicas": 0, "minReplicas": 0, "maxReplicas": cap,
            "rayStartParams": {},
            "template": {"spec": {
                "nodeSelector": {"node.kubernetes.io/instance-type": inst.name,
                                 "eks.amazonaws.com/capacityType": market.upper()},  # SPOT / ON_DEMAND
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "ray-worker", "image": image, "env": env, "volumeMounts": mounts,
                                "resources": {"limits": limits, "requests": limits}}],
                "volumes": volumes}}})
    head = {"rayStartParams": {"dashboard-host": "0.0.0.0"},
            "template": {"spec": {"containers": [{
                "name": "ray-head", "image": image, "env": env, "volumeMounts": mounts,
                "ports": [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                          {"containerPort": 10001, "name": "client"}, {"containerPort": 8000, "name": "serve"}],
                "resources": {"limits": {"cpu": 4, "memory": "16Gi"}, "requests": {"cpu": 4, "memory": "16Gi"}}}],
                "volumes": volumes}}}
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": cfg.name},
            "spec": {"rayVersion": "2.60.0", "enableInTreeAutoscaling": True, "headGroupSpec": head,
                     "workerGroupSpecs": workers}}


def check_kuberay(manifest: dict) -> None:
    """The fields KubeRay's RayCluster CRD requires, and names it accepts (DNS-1123 group names)."""
    import re

    spec = manifest.get("spec") or {}
    problems = [f for f in ("headGroupSpec", "workerGroupSpecs") if f not in spec]
    for i, g in enumerate(spec.get("workerGroupSpecs", [])):
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", g.get("groupName", "")):
            problems.append(f"workerGroupSpecs.{i}.groupName {g.get('groupName')!r}")
        if not g.get("template", {}).get("spec", {}).get("containers"):
            problems.append(f"workerGroupSpecs.{i}.template.spec.containers")
        if not 0 <= g.get("minReplicas", 0) <= g.get("maxReplicas", 0):
            problems.append(f"workerGroupSpecs.{i}: minReplicas > maxReplicas")
    if problems:
        raise ConfigError(f"RayCluster manifest: {'; '.join(problems)}")


def check_quotas(cfg: ClusterConfig, groups: dict[str, list[str]], mode: str = "auto",
                 endpoint_url: str | None = None) -> list[str]:
    """The AWS preflight (cluster/capacity/quotas.py) for these groups: `check` always, `skip` never, `auto`
    where AWS credentials are found. Notes for the user; QuotaError when the plan cannot start."""
    if mode == "skip":
        return ["AWS quotas not checked (--quotas skip)"]
    import boto3

    session = boto3.session.Session()
    if mode == "auto" and session.get_credentials() is None:
        return ["AWS quotas not checked: no AWS credentials here (run where they are, or --quotas check)"]
    notes = preflight(cfg, groups, session=session, endpoint_url=endpoint_url)
    return notes or [f"{cfg.provider.region}: every instance type offered; quotas have room for every group"]


def write_cluster_config(cfg: ClusterConfig, out_dir: Path, *, quotas: str = "auto",
                         endpoint_url: str | None = None) -> tuple[dict[str, Path], list[str]]:
    """Validate and check quotas, then write cluster.yaml (Ray launcher), raycluster.yaml (KubeRay)
    and PLACEMENT.md; nothing is written when a check refuses. (paths, notes)."""
    from cluster.models.registry import ModelRegistry

    with naming_source(cfg.config_file or "cluster config"):  # every refusal names the config file
        registry = ModelRegistry.load(cfg.registry_paths())
        groups = plan_groups(cfg, registry)
        launcher = launcher_config(cfg, groups)
        validate_launcher(launcher)
        manifest = kuberay_manifest(cfg, groups)
        check_kuberay(manifest)
        notes = check_quotas(cfg, groups, quotas, endpoint_url)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"launcher": out_dir / "cluster.yaml", "kuberay": out_dir / "raycluster.yaml",
             "placement": out_dir / "PLACEMENT.md"}
    paths["launcher"].write_text(yaml.safe_dump(launcher, sort_keys=False))
    paths["kuberay"].write_text(yaml.safe_dump(manifest, sort_keys=False))
    lines = [f"# {cfg.name}: where each model runs", "", "| instance type | GPUs | accelerator | models |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {INSTANCES[name].gpus} | {INSTANCES[name].accelerator} | {', '.join(ids)} |"
              for name, ids in groups.items()]
    lines += ["", f"Market: {cfg.market}; at most {cfg.max_workers} nodes per group.", "",
              f"    ray up {paths['launcher']}", f"    kubectl apply -f {paths['kuberay']}"]
    lines += ["", "Preflight:", *[f"- {n}" for n in notes]]
    paths["placement"].write_text("\n".join(lines) + "\n")
    return paths, notes


def main(argv: list[str] | None = None) -> int:
    """`yard cluster config CONFIG [key=value ...] [--out DIR] [--quotas auto|check|skip]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "config":
        print("usage: yard cluster config CONFIG [key=value ...] [--out DIR]", file=sys.stderr)
        return 2
    parser = job_parser("yard cluster config", "write a Ray cluster launcher YAML (AWS) and a KubeRay manifest")
    parser.add_argument("--out", default="yard-cluster", help="folder for cluster.yaml, raycluster.yaml, PLACEMENT.md")
    parser.add_argument("--quotas", choices=("auto", "check", "skip"), default="auto",
                        help="AWS offerings and quota preflight: auto (where credentials are found), check, skip")
    parser.add_argument("--endpoint-url", default=None, help="AWS endpoint for the preflight (default: boto3's)")
    args = parser.parse_intermixed_args(argv[1:])
    cfg = job_config(args, ClusterConfig)
    paths, notes = write_cluster_config(cfg, Path(args.out), quotas=args.quotas, endpoint_url=args.endpoint_url)
    for note in notes:
        print(f"preflight: {note}")
    for what, path in paths.items():
        print(f"{what}: {path}")
    return 0
