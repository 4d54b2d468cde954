"""The DNA job's cost: the plan before launch, a ledger row per attempt, and `yard cost` after a
run with one failed and one retried model (waste checked against hand arithmetic)."""
import csv
import json
import sys
from pathlib import Path

import cloudpickle
import pytest
import yaml

from actors.config import DnaConfig
from actors.dna_cost import DnaMeter, plan_cost, plan_table_markdown
from actors.dna_job import DEMO_CONFIG, run_dna
from actors.planner import HostPlan, Plan
from cluster.config import load_config
from cluster.ledger import Ledger
from cluster.prices import DEFAULT_PRICES, load_prices
from cluster.registry import ModelRegistry
from cluster.storage import open_store

FAST = ["probes.count=8", "generation.max_new_tokens=60", "generation.batch_size=8", "hosts.max_hosts=2"]


def cfg_for(zoo, store_dir, models, *extra):
    return load_config(
        DEMO_CONFIG, DnaConfig,
        ["zoo=null", f"registry=[{zoo.registry_path}]", f"storage.uri={store_dir}", f"models={models}", *FAST, *extra],
    )


def make_failing_host(flaky: Path):
    """A ModelHost on which exaone4-c fails its validation gate every time (deterministic: failed at
    once) and qwen3-b raises a CUDA-like error while generating, once (flaky: retried, then kept)."""
    from actors.gates import GateFailure
    from actors.host import ModelHost

    class _Failing(ModelHost):
        def _phase(self, name, model_id, *args, **kwargs):
            super()._phase(name, model_id, *args, **kwargs)
            if name == "validating" and model_id == "exaone4-c":
                raise GateFailure("validation", f"model {model_id}: injected: every reply is empty")
            if name == "generating" and model_id == "qwen3-b" and not flaky.exists():
                flaky.write_text(model_id)
                raise RuntimeError("CUDA error: an illegal memory access was encountered (injected, once)")

    return _Failing


def hand_rate_per_hour(row: dict, prices: dict) -> float:
    """The price table read with yaml, not with cluster/prices.py: GPUs x rate, else cores x rate."""
    market = row["market"]
    if row["gpus"]:
        return row["gpus"] * prices["gpu"][row["accelerator"]][market]
    return row["cpus"] * prices["cpu"][market]


@pytest.mark.slow
def test_yard_cost_after_a_run_with_a_failed_and_a_retried_model(ray_local, zoo, tmp_path, capsys):
    from cluster.cli import main as yard

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    store_dir = tmp_path / "store"
    code, summary = run_dna(cfg_for(zoo, store_dir, ["llama-a", "qwen3-b", "exaone4-c"]), accept_suspicious=True,
                            host_cls=make_failing_host(tmp_path / "flaky"))
    assert code == 1 and summary["outcomes"] == {"llama-a": "ok", "qwen3-b": "ok", "exaone4-c": "failed"}
    report = Path(summary["report"]).read_text().rstrip().splitlines()
    assert report[-1].startswith("Cost: $") and "wasted" in report[-1]  # the report ends with its cost line
    assert "| unit | planned s | actual s |" in "\n".join(report)

    store = open_store(str(store_dir))
    (ledger_key,) = [k for k in store.list_keys("jobs/") if k.endswith("/ledger.jsonl")]
    rows = [json.loads(line) for line in store.get_bytes(ledger_key).decode().splitlines()]
    assert sorted((r["unit"], r["outcome"], r["attempt"]) for r in rows) == [
        ("exaone4-c", "failed", 1), ("llama-a", "kept", 1), ("qwen3-b", "kept", 2), ("qwen3-b", "retried", 1)]
    assert all(r["node_type"] == "cpu" and r["gpus"] == 0 and r["cpus"] == 1 for r in rows)
    assert sum(r["phases"].get("start", 0) for r in rows) > 0  # each host's start is on the ledger,
    for host in {r["where"] for r in rows}:  # shared evenly by the attempts it ran
        assert len({r["phases"]["start"] for r in rows if r["where"] == host}) == 1
    assert all(sum(r["phases"].values()) > 0 for r in rows)

    # hand arithmetic: hours x rate per row, waste = failed + retried + stalled over the total
    prices = yaml.safe_load(DEFAULT_PRICES.read_text())
    usd = [sum(r["phases"].values()) / 3600 * hand_rate_per_hour(r, prices) for r in rows]
    total = sum(usd)
    waste = sum(u for u, r in zip(usd, rows) if r["outcome"] in ("failed", "retried", "stalled"))
    expected_rate = waste / total
    assert 0 < expected_rate < 1

    capsys.readouterr()
    out_dir = tmp_path / "cost"
    assert yard(["cost", "--store", str(store_dir), "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    (job_row,) = list(csv.DictReader((out_dir / "cost_jobs.csv").open()))
    assert float(job_row["waste_rate"]) == pytest.approx(expected_rate, abs=1e-5)
    assert float(job_row["usd"]) == pytest.approx(total, abs=1e-6)
    assert f"1 job, ${total:.4f}, ${waste:.4f} wasted ({100 * expected_rate:.1f}%)" in out
    assert "## Plan vs actual" in out and "| unit | planned s | actual s | planned | actual |" in out
    plan_rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"llama-a", "qwen3-b", "exaone4-c", "total (work)", "wall time"} <= set(plan_rows)
    assert "| 2 | kept |" in plan_rows["qwen3-b"] and "| 1 | failed |" in plan_rows["exaone4-c"]
    models = {r["unit"]: r for r in csv.DictReader((out_dir / "cost_models.csv").open())}
    assert models["qwen3-b"]["attempts"] == "2" and float(models["qwen3-b"]["waste_usd"]) > 0
    assert float(models["llama-a"]["waste_usd"]) == 0
    assert (out_dir / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dry_run_prints_the_priced_plan_and_writes_nothing(ray_local, zoo, tmp_path, capsys):
    code, summary = run_dna(cfg_for(zoo, tmp_path, ["llama-a", "qwen3-b"]), dry_run=True)
    out = capsys.readouterr().out
    assert code == 0 and "| node type | hosts | models | work s | GPU-h | on demand | spot |" in out
    assert "Expected wall time" in out and "- assumed: host start" in out
    units = summary["cost_plan"]["units"]
    assert {u["unit"] for u in units} == {"llama-a", "qwen3-b"} and all(u["node_type"] == "cpu" for u in units)
    assert not (tmp_path / "jobs").exists()


def _plan(models_per_host):
    hosts = [HostPlan(f"host-{i}", "1xH100", 1, 1.0, list(models)) for i, models in enumerate(models_per_host)]
    return Plan(hosts, {})


def test_plan_uses_measured_timings_where_the_store_has_them(zoo, tmp_path):
    registry = ModelRegistry.load([zoo.registry_path])
    store = open_store(str(tmp_path))
    run = store.new_run("dna", "llama-a")
    run.put_json("timings.json", {"load_s": 3.0, "gate_s": 1.0, "generate_s": 8.0, "embed_s": 2.0, "unload_s": 1.0,
                                  "prompts": 4})
    run.complete()
    cfg = DnaConfig(registry=[str(zoo.registry_path)])
    plan = plan_cost(cfg, _plan([["llama-a", "qwen3-b"]]), registry, store, probes=8)
    units = {u["unit"]: u for u in plan["units"]}
    # measured on 4 prompts, planned for 8: generation and embedding double, load does not
    assert units["llama-a"]["phases"]["load"] == 4.0 and units["llama-a"]["phases"]["generate"] == 17.0
    assert units["llama-a"]["phases"]["evaluate"] == 4.0 and units["llama-a"]["phases"]["start"] == 30.0
    assert plan["basis"]["llama-a"].startswith("measured") and plan["basis"]["qwen3-b"] == "assumed"
    assert units["qwen3-b"]["accelerator"] == "H100" and units["qwen3-b"]["phases"]["start"] == 30.0  # shared
    assert plan["wall_s"] == pytest.approx(sum(sum(u["phases"].values()) for u in plan["units"]), abs=0.1)
    text = plan_table_markdown(plan, load_prices())
    assert "| 1xH100 | 1 | 2 |" in text and "Measured: llama-a: measured" in text


def test_meter_books_phases_and_outcomes():
    ledger = Ledger("job-1", "dna")
    meter = DnaMeter(ledger)
    slot = type("Slot", (), {"plan": HostPlan("host-0", "2xA100-40G-8cpu", 2, 2, []), "host_id": "host-0.2"})()
    raw = {"status": "ok", "host_start_s": 5.0, "timings": {"load_s": 2.0, "unload_s": 0.5, "gate_s": 0.5,
                                                           "generate_s": 4.0, "embed_s": 1.0}}
    meter.submitted("m")
    meter.attempt(slot, "m", raw, raw, 1)
    meter.submitted("n")
    meter.attempt(slot, "n", {"status": "infra", "stalled": True, "phase": "loading", "reason": "stalled"}, None, 1)
    meter.submitted("n")
    meter.attempt(slot, "n", {"status": "error", "reason": "boom"}, None, 2)
    kept, stalled, retried = ledger.entries
    assert kept.outcome == "kept" and kept.phases["start"] == 5.0 and kept.phases["load"] == 2.5
    assert kept.phases["generate"] == 4.5 and kept.phases["evaluate"] == 1.0 and kept.accelerator == "A100-40G"
    assert kept.gpus == 2 and kept.where == "host-0.2"
    assert stalled.outcome == "stalled" and list(stalled.phases) == ["load"]
    assert retried.outcome == "retried" and retried.attempt == 2 and list(retried.phases) == ["generate"]
    seconds = sum(e.seconds for e in ledger.entries)
    meter.finish()  # the host's 5 s start, shared by its three attempts
    assert [e.phases["start"] for e in ledger.entries] == [pytest.approx(5 / 3, abs=1e-3)] * 3
    assert sum(e.seconds for e in ledger.entries) == pytest.approx(seconds, abs=1e-3)


def test_expected_wall_time_counts_hosts_queueing_for_gpus():
    """Seen on 2 x H200: a 2-GPU host and two 1-GPU hosts cannot all run at once; the plan said the
    slowest host's time (93 s) while the job took 122 s."""
    from actors.dna_cost import expected_wall_s
    from actors.planner import NodeKind

    node = NodeKind("2xH200", 1, 32, 2, 9.0, 139.8, 256)
    big, a, b = (HostPlan(h, "2xH200", 4, g, []) for h, g in (("host-0", 2), ("host-1", 1), ("host-2", 1)))
    # 2 GPUs x 90 s + 60 s + 60 s = 300 GPU-seconds on 2 GPUs: 150 s at best, not 90
    assert expected_wall_s([(big, 90.0), (a, 60.0), (b, 60.0)], [node]) == 150.0
    # hosts that fit side by side: the slowest one
    assert expected_wall_s([(a, 60.0), (b, 80.0)], [node]) == 80.0
    assert expected_wall_s([(a, 60.0)], []) == 60.0   # no cluster facts: the slowest host
