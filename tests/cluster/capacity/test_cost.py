"""Cost arithmetic: waste, cold start, per kept artifact, the seed's headline, plan beside actual,
and jobs read back from the store."""
import pytest
import yaml

from cluster.capacity.cost import cost_line, headline, plan_vs_actual, read_jobs, summarise
from cluster.capacity.ledger import Ledger
from cluster.capacity.prices import PriceTable
from cluster.config import load_config
from cluster.ops.jobs import run_job
from cluster.store.storage import open_store


def make_table(folder) -> PriceTable:
    """H100 $4 per GPU-hour on demand, $2 on spot; CPU cores $0.10 / $0.05 per hour."""
    path = folder / "prices.yaml"
    path.write_text(yaml.safe_dump({"kind": "prices", "source": "test prices", "gpu": {"H100": {"on_demand": 4.0, "spot": 2.0}},
                                    "cpu": {"on_demand": 0.1, "spot": 0.05}}))
    return load_config(path, PriceTable)


@pytest.fixture
def table(tmp_path):
    return make_table(tmp_path)


def one_of_each(job_id="job-1") -> Ledger:
    """An hour on one H100 per row ($4 on demand): kept, retried then kept, failed, stalled, ASHA-stopped."""
    ledger = Ledger(job_id, "dna")
    add = dict(node_type="1xH100", accelerator="H100", gpus=1, cpus=1)
    ledger.add(unit="a", phases={"start": 900, "load": 900, "generate": 1800}, outcome="kept", **add)
    ledger.add(unit="b", phases={"generate": 3600}, outcome="retried", **add)
    ledger.add(unit="b", phases={"generate": 3600}, outcome="kept", attempt=2, **add)
    ledger.add(unit="c", phases={"load": 3600}, outcome="failed", **add)
    ledger.add(unit="d", phases={"generate": 3600}, outcome="stalled", **add)
    ledger.add(unit="e", phases={"train": 3600}, outcome="stopped", **add)
    return ledger


def test_waste_is_failed_retried_skipped_stalled_and_asha_stops_are_their_own_line(table):
    s = summarise(one_of_each().entries, table)
    assert s.usd == pytest.approx(24.0) and s.gpu_hours == pytest.approx(6.0) and s.attempts == 6
    assert s.waste_usd == pytest.approx(12.0) and s.waste_rate == pytest.approx(0.5)  # retried + failed + stalled
    assert s.stopped_usd == pytest.approx(4.0)
    assert s.cold_usd == pytest.approx(2.0 + 4.0)  # a's start + load, c's load
    assert s.kept_units == 2 and s.usd_per_kept == pytest.approx(12.0)
    assert s.by_outcome == pytest.approx({"kept": 8.0, "retried": 4.0, "failed": 4.0, "stalled": 4.0, "stopped": 4.0})


def test_market_reprices_every_entry(table):
    assert summarise(one_of_each().entries, table, market="spot").usd == pytest.approx(12.0)


def test_the_seed_headline_and_the_cost_line(table):
    entries = one_of_each().entries
    assert headline(1, summarise(entries, table)) == "1 job, $24.00, $12.00 wasted (50.0%)"
    line = cost_line(entries, table)
    assert line.startswith("Cost: $24.00 (6.000 GPU-h, 6 attempts); $12.00 wasted (50.0%: failed $4.00, "
                           "retried $4.00, stalled $4.00)")
    assert "cold start $6.00 (25.0%)" in line and "stopped by ASHA $4.00" in line
    assert "$12.00 per kept artifact (2 kept)" in line and line.endswith("Prices: test prices.")
    assert cost_line([], table).startswith("Cost: $0.00 (0 h, 0 attempts)") and "nothing kept" in cost_line([], table)


def test_small_figures_keep_their_digits(table):
    ledger = Ledger("j", "dna")
    ledger.add(unit="a", node_type="cpu", accelerator=None, gpus=0, cpus=1, phases={"generate": 36}, outcome="kept")
    assert cost_line(ledger.entries, table).startswith("Cost: $0.0010 (0.010 CPU-core-h, 1 attempt)")


def test_plan_beside_actual(table):
    plan = {"units": [{"job_id": "", "kind": "dna", "unit": u, "node_type": "1xH100", "accelerator": "H100", "gpus": 1,
                       "cpus": 1, "market": "", "phases": {"generate": 1800}} for u in ("a", "b", "z")],
            "basis": {"a": "measured (run r1)", "b": "assumed", "z": "assumed"}, "wall_s": 2000.0}
    rows = {r[0]: r for r in plan_vs_actual(plan, one_of_each().entries, table, actual_wall_s=9000.0)}
    assert rows["a"] == ["a", "1800.0", "3600.0", "$2.00", "$4.00", "1", "kept", "measured (run r1)"]
    assert rows["b"] == ["b", "1800.0", "7200.0", "$2.00", "$8.00", "2", "kept", "assumed"]
    assert rows["z"][2:7] == ["-", "$2.00", "-", "0", "-"]  # planned, never ran
    assert rows["c"][1] == "-" and rows["c"][-1] == "not planned"
    assert rows["total (work)"][1:5] == ["5400.0", "21600.0", "$6.00", "$24.00"]
    assert rows["wall time"][1:3] == ["2000.0", "9000.0"]


def test_jobs_are_read_back_from_beside_their_manifests(tmp_path):
    store = open_store(str(tmp_path))
    with run_job("dna", None, store) as job:
        job.ledger.entries = one_of_each(job.job_id).entries
        job.plan = {"kind": "dna", "units": []}
    first = job.job_id
    with run_job("sweep", None, store) as job:
        job.ledger.add(unit="t1", node_type="cpu", accelerator=None, gpus=0, cpus=1, phases={"train": 5}, outcome="kept")
    with run_job("chat", None, store):  # no ledger, no plan: not a job yard cost reports
        pass
    jobs = read_jobs(store)
    assert [(j.job, j.status) for j in jobs] == [("dna", "succeeded"), ("sweep", "succeeded")]
    assert jobs[0].job_id == first and len(jobs[0].entries) == 6 and jobs[0].plan == {"kind": "dna", "units": []}
    assert jobs[1].plan is None and jobs[0].wall_s is not None
    assert [j.job for j in read_jobs(store, ["sweep"])] == ["sweep"]
    assert [j.job_id for j in read_jobs(store, [first[:-3]])] == [first]
    assert read_jobs(store, ["nothing"]) == []
