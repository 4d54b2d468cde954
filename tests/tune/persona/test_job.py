"""tune/persona/job.py: --plan without training, bad input refused before Ray, a tiny job on S3 whose
stalled stage is killed and rerun.
The demo job as shipped (prep -> SFT -> DPO -> merge -> lineage -> probe of base and child, the
child beating its base) runs as `yard demo`'s persona step: tests/cluster/test_demo_sweep_serve_persona.py."""
import json
import os
import signal
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import yaml

from cluster.config import ConfigError, UserError, load_config
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


def make_stopping_stage(stopped: Path):
    """The real stage task, except that the first SFT attempt reports its phase and then stops for
    good (SIGSTOP, never resumed: a wedged data loader or NCCL call)."""
    from tune.persona.job import run_stage

    def stage(name, **kw):
        if name == "sft" and not stopped.exists():
            from tune.persona.job import _reporter

            _reporter(kw["store_uri"], kw["endpoint_url"], kw["job_id"], name, kw["stall_after_s"]).phase(name)
            stopped.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)
        return run_stage(name, **kw)

    return stage


@pytest.mark.timeout(400)
def test_a_stalled_stage_is_killed_and_rerun_on_an_s3_store(zoo_registry, tmp_path, ray_local, s3_uri):
    """A tiny job (SFT 2 steps -> DPO 2 steps -> merge -> probe of the child) on an S3 store (moto's
    server over HTTP): adapters pass between the stage tasks through S3, and the merged model,
    reports and probe results land there. Its first SFT attempt stops for good (SIGSTOP): the job
    kills it after its 5 s stall limit and reruns it."""
    from cluster.ops.status import collect
    from cluster.store.storage import open_store

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    stopped = tmp_path / "stopped"
    uri, endpoint = s3_uri
    cfg = _cfg(zoo_registry, tmp_path, "name=stall", f"storage.uri={uri}", f"storage.endpoint_url={endpoint}",
               "sft.max_steps=2", "dpo.max_steps=2", "lora.r=4", "lora.alpha=8", "probe.max_tokens=8",
               "probe.compare_base=false", "register_child=false", "stall_after_s=5")
    started = time.time()
    code, summary = job.run_persona(cfg, stage_fn=make_stopping_stage(stopped))
    assert stopped.exists()  # the first attempt really stopped
    assert time.time() - started < 300  # acted on, not waited out
    assert code == 0, summary
    (incident,) = summary["incidents"]
    assert incident["task"] == "sft" and incident["phase"] == "sft" and incident["retried"]
    assert incident["heartbeat_age_s"] >= 5  # rounded to 0.1 s
    store = open_store(uri, endpoint)
    assert summary["report"].startswith(f"{uri}/persona/stall/")
    report = store.get_bytes(summary["report"][len(uri) + 1:]).decode()
    assert "## Stages the job killed" in report and "| sft | sft |" in report
    (status,) = [j for j in collect(store) if j.job_name == "persona"]
    tasks = {t.task: t for t in status.tasks}
    assert tasks["sft.killed1"].status == "FAILED" and "stalled" in tasks["sft.killed1"].message
    assert tasks["sft"].status == "SUCCEEDED" and status.status == "SUCCEEDED"
    # the killed attempt is on the ledger as waste, the rerun as the kept attempt 2
    rows = [row for k in store.list_keys("jobs/") if k.endswith("/ledger.jsonl")
            for row in map(json.loads, store.get_bytes(k).decode().splitlines()) if row["job_id"] == status.job_id]
    sft = sorted((r["attempt"], r["outcome"]) for r in rows if r["unit"] == "sft")
    assert sft == [(1, "stalled"), (2, "kept")]
    assert [r["phases"]["train"] for r in rows if r["outcome"] == "stalled"][0] >= 5  # it held its CPU that long
    # every stage's output is on S3: the adapters, the merged model, the report, the probe of the child
    keys = store.list_keys("persona/stall/")
    for name in ("sft/adapter/adapter_config.json", "dpo/adapter/adapter_config.json", "model/config.json",
                 "report.md", "losses.png", "_COMPLETE.json"):
        assert any(k.endswith(f"/{name}") for k in keys), name
    assert any(k.endswith("report.md") for k in store.list_keys("probe/"))  # the probe step ran on the S3 model
