"""The ledger: one row per attempt, outcomes and phases checked, JSON lines round trip."""
import json

import pytest

from cluster.capacity.ledger import Ledger, LedgerEntry, node_type_facts, parse_jsonl, unit_resources


def test_rows_round_trip_through_jsonl():
    ledger = Ledger("job-1", "dna", market="spot")
    ledger.add(unit="a", node_type="1xH100", accelerator="H100", gpus=1, cpus=2,
               phases={"start": 10.0, "load": 5.0, "generate": 100.0}, outcome="kept", where="host-0")
    ledger.add(unit="b", node_type="cpu", accelerator=None, gpus=0, cpus=1, phases={"generate": 3.0},
               outcome="retried", attempt=1, reason="x" * 400, market="on_demand")
    back = parse_jsonl(ledger.to_jsonl(), "ledger.jsonl")
    assert [e.to_dict() for e in back] == [e.to_dict() for e in ledger.entries]
    a, b = back
    assert a.seconds == 115.0 and a.cold_seconds == 15.0 and not a.waste and a.market == "spot"
    assert b.waste and b.market == "on_demand" and len(b.reason) == 300


@pytest.mark.parametrize("field, value", [("outcome", "lost"), ("phases", {"compile": 1.0})])
def test_an_unknown_outcome_or_phase_is_refused(field, value):
    row = dict(job_id="j", kind="dna", unit="a", node_type="cpu", accelerator=None, gpus=0, cpus=1,
               market="on_demand", phases={"generate": 1.0}, outcome="kept")
    with pytest.raises(ValueError, match="allowed"):
        LedgerEntry(**{**row, field: value})


def test_a_bad_row_is_skipped_with_a_warning_and_the_rest_kept(caplog):
    good = json.dumps(dict(job_id="j", kind="dna", unit="a", node_type="cpu", accelerator=None, gpus=0, cpus=1,
                           market="on_demand", phases={"generate": 1.0}, outcome="kept"))
    rows = parse_jsonl(f"{good}\nnot json\n{{\"outcome\": \"kept\"}}\n\n{good}\n", "s3://b/ledger.jsonl")
    assert len(rows) == 2
    assert "s3://b/ledger.jsonl:2" in caplog.text and "s3://b/ledger.jsonl:3" in caplog.text


def test_negative_seconds_count_as_zero():
    e = LedgerEntry("j", "dna", "a", "cpu", None, 0, 1, "on_demand", {"generate": -0.5, "load": 1}, "kept")
    assert e.seconds == 1.0


@pytest.mark.parametrize("kind, facts", [("cpu", (None, 0)), ("2xH100", ("H100", 2)),
                                         ("1xA100-40G-8cpu", ("A100-40G", 1)), ("8xA100-40G", ("A100-40G", 8)),
                                         ("cpu-4cpu", (None, 0))])
def test_node_type_facts(kind, facts):
    assert node_type_facts(kind) == facts


def test_unit_resources_is_the_one_rule_for_a_rows_node_type_and_totals(monkeypatch):
    # chat workers, Serve replicas, sweep trials and persona stages all book through it
    assert unit_resources(0, 2) == {"node_type": "cpu", "accelerator": None, "gpus": 0, "cpus": 2}
    assert unit_resources(1, 4, accelerator="H100")["node_type"] == "1xH100"
    two = unit_resources(2, 8, tasks=3, accelerator="H200")  # 3 replicas of a two-GPU candidate
    assert (two["node_type"], two["gpus"], two["cpus"]) == ("2xH200", 6, 24)
    assert unit_resources(0.5, 1, accelerator="L4")["node_type"] == "1xL4"  # a fractional trial: one GPU's node
    monkeypatch.setattr("cluster.capacity.ledger.cluster_accelerator", lambda: None)
    assert unit_resources(1, 1)["node_type"] == "gpu"  # GPUs of no known type
    monkeypatch.setattr("cluster.capacity.ledger.cluster_accelerator", lambda: "A10G")
    assert unit_resources(1, 1) == {"node_type": "1xA10G", "accelerator": "A10G", "gpus": 1, "cpus": 1}
    assert unit_resources(1, 1, accelerator="H100")["accelerator"] == "H100"  # the config's own type wins
