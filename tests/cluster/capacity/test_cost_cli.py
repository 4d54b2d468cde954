"""`yard cost` through the CLI: markdown on stdout, files with --out, bad input in one line (exit 2)."""
import pytest
import yaml

from cluster.cli import main as yard
from cluster.ops.jobs import run_job
from cluster.store.storage import open_store
from tests.cluster.capacity.test_cost import one_of_each


def recorded_store(tmp_path):
    store = open_store(str(tmp_path / "store"))
    with run_job("dna", None, store) as job:
        job.ledger.entries = one_of_each(job.job_id).entries
    return store, job.job_id


def test_cost_of_a_store_on_stdout_and_in_files(tmp_path, capsys):
    store, job_id = recorded_store(tmp_path)
    assert yard(["cost", "--store", store.uri, job_id, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    # the shipped table: H100 at $3.49 per GPU-hour on demand, six GPU-hours, three of them wasted
    assert "**1 job, $20.94, $10.47 wasted (50.0%)**" in out
    assert f"wrote {tmp_path / 'out' / 'cost.png'}" in out and (tmp_path / "out" / "cost_jobs.csv").exists()


def test_market_and_prices_override(tmp_path, capsys):
    store, _ = recorded_store(tmp_path)
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"kind": "prices", "gpu": {"H100": {"on_demand": 10, "spot": 1}},
                                    "cpu": {"on_demand": 0, "spot": 0}}))
    assert yard(["cost", "--store", store.uri, "--prices", str(mine)]) == 0
    assert "**1 job, $60.00, $30.00 wasted (50.0%)**" in capsys.readouterr().out
    assert yard(["cost", "--store", store.uri, "--prices", str(mine), "--market", "spot"]) == 0
    assert "**1 job, $6.00, $3.00 wasted (50.0%)**" in capsys.readouterr().out


def test_a_bad_price_table_is_one_line_exit_2(tmp_path, capsys):
    store, _ = recorded_store(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"kind": "prices", "gpu": {"H100": {"on_demand": "cheap", "spot": 1}},
                                   "cpu": {"on_demand": 0, "spot": 0}}))
    capsys.readouterr()
    assert yard(["cost", "--store", store.uri, "--prices", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"yard cost: {bad}: gpu.H100.on_demand: 'cheap'")


def test_an_unpriced_accelerator_and_no_matching_job_are_one_line_exit_2(tmp_path, capsys):
    store, _ = recorded_store(tmp_path)
    cpu_only = tmp_path / "cpu.yaml"
    cpu_only.write_text(yaml.safe_dump({"kind": "prices", "cpu": {"on_demand": 0, "spot": 0}}))
    capsys.readouterr()
    assert yard(["cost", "--store", store.uri, "--prices", str(cpu_only)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gpu.H100: no price for accelerator 'H100'" in err[0]
    assert yard(["cost", "--store", store.uri, "sweep"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"yard cost: no job matching sweep with a ledger in {store.uri}"]


@pytest.mark.slow
def test_yard_cost_on_the_demo_store_after_a_demo_with_a_failed_and_a_retried_model(ray_local, zoo, tmp_path,
                                                                                     capsys, monkeypatch):
    """`yard demo` (its real entry: zoo, chat, then the DNA step) with two injected faults:
    exaone4-c fails its validation gate (failed at once) and qwen3-b hits a CUDA-like error once
    (retried on a fresh host, then kept). The DNA step runs on three models and 8 probes here: the
    faults and the arithmetic are what is tested, not the size, and the chat job on three models
    (the demo's DNA and chat steps as shipped, on every zoo model, run in tests/cluster/test_demo.py;
    its sweep, Serve and persona steps in test_demo_sweep_serve_persona.py). Then `yard cost` on the
    demo's store, its waste rate checked against hand arithmetic on the ledger rows, and the DNA job's own cost on its own
    (`_check_the_dna_jobs_cost`: this run is also actors/dna_cost.py's end-to-end test)."""
    import csv
    import json
    import sys

    import cloudpickle

    from actors import dna_job
    from cluster import demo
    from cluster.capacity.cost import money
    from cluster.capacity.prices import DEFAULT_PRICES
    from tests.actors import test_dna_cost

    cloudpickle.register_pickle_by_value(test_dna_cost)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    failing = test_dna_cost.make_failing_host(tmp_path / "flaky")

    dna_results = []

    def small_failing_run(cfg, **kwargs):  # the demo's config, on three models with the fast settings
        small = test_dna_cost.cfg_for(zoo, cfg.storage.uri, ["llama-a", "qwen3-b", "exaone4-c"])
        dna_results.append(run_dna(small, host_cls=failing, **kwargs))
        return dna_results[-1]

    def small_chat(cfg, *args):  # a second job in the store, kept whole: three models, one worker
        return run_chat(cfg.model_copy(update={"models": ["llama-a", "qwen3-b", "exaone4-c"], "workers": 1,
                                               "max_new_tokens": 16}), *args)

    run_dna, run_chat = dna_job.run_dna, demo.run_chat
    monkeypatch.setattr(dna_job, "run_dna", small_failing_run)
    monkeypatch.setattr(demo, "run_chat", small_chat)
    monkeypatch.setattr(demo, "DEMOS", {"dna": "actors.dna_job:demo"})
    store_dir = tmp_path / "store"
    assert demo.main(["--store", str(store_dir), "--zoo-dir", str(zoo.zoo_dir)]) == 1  # the DNA step failed
    out = capsys.readouterr().out
    assert "chat       ok" in out and "dna        FAILED" in out and f"yard cost --store {store_dir}" in out

    store = open_store(str(store_dir))
    rows = [json.loads(line) for key in store.list_keys("jobs/") if key.endswith("/ledger.jsonl")
            for line in store.get_bytes(key).decode().splitlines()]
    dna = [r for r in rows if r["kind"] == "dna"]  # the chat job books a row per model too, all kept
    outcomes = sorted((r["unit"], r["outcome"]) for r in dna if r["unit"] in ("exaone4-c", "qwen3-b"))
    assert outcomes == [("exaone4-c", "failed"), ("qwen3-b", "kept"), ("qwen3-b", "retried")]
    assert {r["outcome"] for r in dna if r["unit"] not in ("exaone4-c", "qwen3-b")} == {"kept"}
    assert {r["outcome"] for r in rows if r["kind"] == "chat"} == {"kept"}

    # by hand: hours x the shipped table's rate (read with yaml) per row; waste = failed + retried + stalled
    prices = yaml.safe_load(DEFAULT_PRICES.read_text())
    usd = [sum(r["phases"].values()) / 3600 * test_dna_cost.hand_rate_per_hour(r, prices) for r in rows]
    total = sum(usd)
    waste = sum(u for u, r in zip(usd, rows) if r["outcome"] in ("failed", "retried", "stalled"))
    assert 0 < waste < total

    assert yard(["cost", "--store", str(store_dir), "--out", str(tmp_path / "cost")]) == 0
    text = capsys.readouterr().out
    jobs = list(csv.DictReader((tmp_path / "cost" / "cost_jobs.csv").open()))
    assert sum(float(j["usd"]) for j in jobs) == pytest.approx(total, abs=1e-5)
    assert sum(float(j["waste_usd"]) for j in jobs) == pytest.approx(waste, abs=1e-5)
    n = f"{len(jobs)} job{'s' if len(jobs) > 1 else ''}"
    assert f"{n}, {money(total)}, {money(waste)} wasted ({100 * waste / total:.1f}%)" in text
    assert "| unit | planned s | actual s | planned | actual |" in text  # plan beside actual
    ((code, summary),) = dna_results
    _check_the_dna_jobs_cost(store_dir, code, summary, tmp_path, capsys)


def _check_the_dna_jobs_cost(store_dir, code, summary, tmp_path, capsys):
    """The DNA job's own cost (actors/dna_cost.py) in that run: its report ends with a cost line, a
    ledger row per attempt with the host's start shared by the attempts it ran, and `yard cost` of
    that job alone (its waste rate by hand, plan beside actual, per-model CSV, the chart)."""
    import csv
    import json
    from pathlib import Path

    from cluster.capacity.prices import DEFAULT_PRICES
    from tests.actors.test_dna_cost import hand_rate_per_hour

    assert code == 1 and summary["outcomes"] == {"llama-a": "ok", "qwen3-b": "ok", "exaone4-c": "failed"}
    report = Path(summary["report"]).read_text().rstrip().splitlines()
    assert report[-1].startswith("Cost: $") and "wasted" in report[-1]  # the report ends with its cost line
    assert "| unit | planned s | actual s |" in "\n".join(report)

    store = open_store(str(store_dir))
    rows = [json.loads(line) for key in store.list_keys("jobs/dna/") if key.endswith("/ledger.jsonl")
            for line in store.get_bytes(key).decode().splitlines()]
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
    out_dir = tmp_path / "dna-cost"
    assert yard(["cost", "--store", str(store_dir), rows[0]["job_id"], "--out", str(out_dir)]) == 0
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
