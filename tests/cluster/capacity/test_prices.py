"""The price table: shipped list prices, rates per accelerator and market, bad tables in one line."""
import pytest
import yaml

from cluster.capacity.prices import DEFAULT_PRICES, PriceTable, job_market, job_prices, load_prices
from cluster.config import ConfigError, load_config


def write(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_the_shipped_table_prices_every_known_accelerator_and_cpus():
    from cluster.capacity.gpus import ACCELERATORS

    table = load_prices()
    assert table.config_file == str(DEFAULT_PRICES) and "override" in table.source
    assert set(ACCELERATORS) <= set(table.gpu)
    for prices in table.gpu.values():
        assert 0 < prices.spot <= prices.on_demand
    assert 0 < table.cpu.on_demand and table.market == "on_demand"
    # seed 001's quotes: H200 SXM5 $3.99/h, H100 SXM5 $3.49/h
    assert table.gpu["H200"].on_demand == 3.99 and table.gpu["H100"].on_demand == 3.49


def test_a_unit_is_priced_by_its_gpus_else_its_cores(tmp_path):
    table = load_config(write(tmp_path / "p.yaml", {"kind": "prices", "gpu": {"H100": {"on_demand": 4.0, "spot": 1.5}},
                                                    "cpu": {"on_demand": 0.1, "spot": 0.05}}), PriceTable)
    assert table.usd_per_hour("H100", gpus=8, cpus=16) == 32.0  # the table's market: on demand
    assert table.usd_per_hour("H100", gpus=0.5, cpus=1, market="spot") == 0.75  # side by side on one GPU
    assert table.usd_per_hour(None, gpus=0, cpus=4) == pytest.approx(0.4)


def test_an_unpriced_accelerator_is_one_line_naming_the_table(tmp_path):
    path = write(tmp_path / "p.yaml", {"kind": "prices", "gpu": {}, "cpu": {"on_demand": 0, "spot": 0}})
    with pytest.raises(ConfigError) as err:
        load_prices(path).usd_per_hour("H100", gpus=1, cpus=1)
    assert str(err.value).startswith(f"{path}: gpu.H100: no price") and "\n" not in str(err.value)


@pytest.mark.parametrize("data, field", [
    ({"kind": "prices", "gpu": {"H100": {"on_demand": -1, "spot": 1}}, "cpu": {"on_demand": 0, "spot": 0}},
     "gpu.H100.on_demand"),
    ({"kind": "prices", "gpu": {"H100": {"on_demand": 1}}, "cpu": {"on_demand": 0, "spot": 0}}, "gpu.H100.spot"),
    ({"kind": "prices", "market": "reserved", "cpu": {"on_demand": 0, "spot": 0}}, "market"),
    ({"kind": "prices", "gpu": {}}, "cpu"),
    ({"kind": "dna", "cpu": {"on_demand": 0, "spot": 0}}, "kind"),
    ({"kind": "prices", "cpu": {"on_demand": 0, "spot": 0}, "node_start": {"load_s": [900, 420]}},
     "node_start.load_s"),
    ({"kind": "prices", "cpu": {"on_demand": 0, "spot": 0}, "node_start": {"allocation_s": -1}},
     "node_start.allocation_s"),
    ({"kind": "prices", "cpu": {"on_demand": 0, "spot": 0}, "node_start": {"pull_s": 60}}, "node_start.pull_s"),
])
def test_a_bad_table_is_one_line_naming_file_and_field(tmp_path, data, field):
    path = write(tmp_path / "bad.yaml", data)
    with pytest.raises(ConfigError) as err:
        load_prices(path)
    assert str(err.value).startswith(f"{path}: {field}:") and "\n" not in str(err.value)


def test_a_job_config_names_its_table_and_market(tmp_path):
    from cluster.config import JobConfig

    path = write(tmp_path / "mine.yaml", {"kind": "prices", "market": "spot", "cpu": {"on_demand": 1, "spot": 0.5}})
    cfg = JobConfig(kind="x", cost={"prices": path})
    assert job_prices(cfg).config_file == path and job_market(cfg) == "spot"
    assert job_market(JobConfig(kind="x", cost={"prices": path, "market": "on_demand"})) == "on_demand"
    assert job_prices(JobConfig(kind="x")).config_file == str(DEFAULT_PRICES)
    assert job_market(None) == "on_demand"  # a job without a config: the shipped table's market


def test_the_seed_table_states_the_seeds_node_start(tmp_path):
    # seed 000, lesson 6: "~9 min spot allocation + ECR pull, then 7-15 min weights load"
    seed = load_prices(DEFAULT_PRICES.parent / "prices.seed.yaml")
    assert seed.market == "spot" and seed.node_start.allocation_s == 540 and seed.node_start.load_s == (420, 900)
    assert seed.node_start.seconds() == 540 + 660 and seed.node_start.seconds(load_s=900) == 1440
    shipped = load_prices()
    assert shipped.node_start is None  # a cluster that is already up: plans add nothing
    for accel in ("H100", "H200"):  # the same rates as the shipped table
        assert seed.gpu[accel] == shipped.gpu[accel]
    one = write(tmp_path / "one.yaml", {"kind": "prices", "cpu": {"on_demand": 0, "spot": 0},
                                        "node_start": {"allocation_s": 60, "load_s": 30}})
    assert load_prices(one).node_start.load_s == (30, 30)  # one number: no range
