"""tune/persona/job.py: --plan without training, bad input refused before Ray, and the demo job as
shipped (prep -> SFT -> DPO -> merge -> lineage -> probe of base and child) on the toy qwen3-b on
local Ray: the child must beat its base on the persona probes."""
import json
from pathlib import Path

import pytest
import yaml

from cluster.config import ConfigError, UserError, load_config
from cluster.registry import ModelRegistry
from cluster.storage import open_store
from tune.persona import job
from tune.persona.config import PersonaConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DEMO = str(job.DEMO_CONFIG)


@pytest.fixture
def zoo_registry(zoo, tmp_path) -> Path:
    """A zoo of its own holding qwen3-b (absolute source), so a registered child stays in tmp_path."""
    data = yaml.safe_load(Path(zoo.registry_path).read_text())
    entry = dict(data["models"]["qwen3-b"], source=str(Path(zoo.zoo_dir) / "qwen3-b"))
    zoo_dir = tmp_path / "zoo"
    zoo_dir.mkdir()
    (zoo_dir / "models.yaml").write_text(yaml.safe_dump({"kind": "models", "models": {"qwen3-b": entry}}))
    return zoo_dir / "models.yaml"


def _cfg(registry: Path, tmp_path: Path, *extra: str) -> PersonaConfig:
    return load_config(DEMO, PersonaConfig, ["zoo=null", f"registry=[{registry}]",
                                             f"storage.uri={tmp_path / 'store'}", *extra])


@pytest.fixture
def no_training(monkeypatch):
    """Ray and the trainers must not be touched: any call fails the test."""
    def boom(*a, **k):
        raise AssertionError("Ray or training was started")

    monkeypatch.setattr("cluster.runtime.connect", boom)
    monkeypatch.setattr("tune.persona.train.train_sft", boom)


def test_plan_prints_steps_and_costs_without_training(zoo_registry, tmp_path, capsys, no_training):
    code = job.main([DEMO, "--plan", "zoo=null", f"registry=[{zoo_registry}]", f"storage.uri={tmp_path / 'store'}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "270 SFT rows, 36 DPO pairs after prep (7 bad lines, 7 duplicates" in out
    assert "| sft | 270 | 4 | 8 | 256 | 120 |" in out         # capped by the demo's sft.max_steps
    assert "H200 SXM5 (chosen)" in out and "H100 PCIe" in out
    assert not (tmp_path / "store").exists()                 # nothing written, nothing trained


def test_zero_valid_rows_refused_before_ray(zoo_registry, tmp_path, no_training):
    data = tmp_path / "data"
    data.mkdir()
    (data / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    with pytest.raises(UserError, match="no valid rows"):
        job.run_persona(_cfg(zoo_registry, tmp_path, f"prep.data_dir={data}"))


def test_unknown_base_is_one_line(zoo_registry, tmp_path, no_training):
    with pytest.raises(ConfigError, match="'nope': unknown model id"):
        job.run_persona(_cfg(zoo_registry, tmp_path, "base=nope"))


def test_dpo_null_is_allowed_and_plans_sft_only(zoo_registry, tmp_path):
    cfg = _cfg(zoo_registry, tmp_path, "dpo=null")
    assert cfg.dpo is None
    prep, _ = job.prepare_data(cfg, [str(zoo_registry)])
    plan = job.make_plan(cfg, len(prep.sft), len(prep.dpo))
    assert [s.stage for s in plan.stages] == ["sft"]


def test_gpu_request_on_a_cpu_cluster_is_refused(zoo_registry, tmp_path, ray_local):
    with pytest.raises(ConfigError, match=r"resources\.sft\.num_gpus: 1 but the Ray cluster has 0 GPU"):
        job.check_resources(_cfg(zoo_registry, tmp_path, "resources.sft.num_gpus=1"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_job_outputs_lineage_and_a_child_that_beats_its_base(zoo_registry, tmp_path, ray_local):
    """The demo config as shipped (~3 min on 2 cores): outputs, lineage, and probes of base and child."""
    code, summary = job.run_persona(_cfg(zoo_registry, tmp_path, "name=tiny"), config_path=DEMO)
    assert code == 0, summary.get("probe")
    store = open_store(str(tmp_path / "store"))
    prefix = summary["prefix"]
    files = set(store.list_keys(prefix + "/"))
    for name in ("prep_report.md", "lengths.png", "sft/adapter/adapter_config.json", "dpo/adapter/adapter_config.json",
                 "model/config.json", "losses.png", "report.md", "summary.json", "_COMPLETE.json"):
        assert f"{prefix}/{name}" in files, name
    assert [s["stage"] for s in summary["stages"]] == ["sft", "dpo"]
    assert [s["steps"] for s in summary["stages"]] == [120, 4]
    sft_losses = [r["loss"] for r in summary["stages"][0]["log"] if "loss" in r]
    assert sft_losses[-1] < sft_losses[0] / 4                  # measured 10.7 -> 0.8 (held-out 0.55)
    # the merged model is a persona child of its zoo base, pointing at the stored model
    child = ModelRegistry.load([zoo_registry]).get("qwen3-b.tiny")
    assert (child.parent, child.derivation) == ("qwen3-b", "persona")
    assert Path(child.source) == (tmp_path / "store" / prefix / "model").resolve()
    # base and child both probed under both conditions, side by side in the report
    cands = {c["variant"]: c["conditions"] for c in summary["probe"]["candidates"]}
    assert set(cands) == {"merged", "base"}
    for conds in cands.values():
        assert set(conds) == {"with_system", "without_system"} and conds["without_system"]["probes"] > 0
    # the fine-tune teaches the persona: without the system prompt the child beats its base on facts
    # and identity (measured: facts 0% -> 75%, identity 50% -> 100%, all probes 35% -> 83%)
    base, tuned = cands["base"]["without_system"], cands["merged"]["without_system"]
    assert tuned["groups"]["fact"]["pass_rate"] >= base["groups"]["fact"]["pass_rate"] + 0.25
    assert tuned["groups"]["identity"]["pass_rate"] > base["groups"]["identity"]["pass_rate"]
    assert tuned["pass_rate"] >= base["pass_rate"] + 0.15
    report = store.get_bytes(f"{prefix}/report.md").decode()
    assert "| | base, with system | child, with system | base, without system | child, without system |" in report
    assert "\n| fact | " in report and "\n| fact cat | " in report and "Judge: replayed" in report
    assert "| sft | 120 | 120 |" in report                    # projected and actual steps side by side
    stored = json.loads(store.get_bytes(f"{prefix}/summary.json"))
    assert stored["child"]["registered"] is True and stored["prep"]["bad_lines"] == 7


@pytest.mark.timeout(400)
def test_tiny_job_on_an_s3_store(zoo_registry, tmp_path, s3_uri):
    """storage.uri s3://: adapters pass between the stage tasks through S3 (moto's server over HTTP),
    and the merged model, reports and probe results land there. Run as `yard persona` in a process of
    its own so its Ray workers inherit the S3 credentials."""
    import os
    import subprocess
    import sys

    import boto3

    uri, endpoint = s3_uri
    repo = Path(__file__).resolve().parents[3]
    args = [sys.executable, "-m", "cluster", "persona", DEMO, "zoo=null", f"registry=[{zoo_registry}]",
            f"storage.uri={uri}", f"storage.endpoint_url={endpoint}", "name=s3tiny", "sft.max_steps=2",
            "dpo.max_steps=2", "lora.r=4", "lora.alpha=8", "probe.max_tokens=8", "probe.compare_base=false"]
    env = {**os.environ, "YARD_DASHBOARD": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=380)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    bucket, prefix = uri[len("s3://"):].split("/", 1)
    keys = [o["Key"] for page in boto3.client("s3", endpoint_url=endpoint).get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
    run = [k for k in keys if "/persona/s3tiny/" in k]
    for name in ("sft/adapter/adapter_config.json", "dpo/adapter/adapter_config.json", "model/config.json",
                 "report.md", "losses.png", "_COMPLETE.json"):
        assert any(k.endswith(f"/{name}") for k in run), name
    assert any("/probe/" in k and k.endswith("report.md") for k in keys)  # the probe step ran on the S3 model
