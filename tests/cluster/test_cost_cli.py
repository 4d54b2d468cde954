"""`yard cost` through the CLI: markdown on stdout, files with --out, bad input in one line (exit 2)."""
import yaml

from cluster.cli import main as yard
from cluster.jobs import run_job
from cluster.storage import open_store
from tests.cluster.test_cost import one_of_each


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
