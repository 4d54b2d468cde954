"""The DNA job's cost: the plan before launch, the meter's ledger rows, and the failing host that
tests/cluster/capacity/test_cost_cli.py's demo-with-faults run uses (a run with one failed and one retried
model: its ledger and `yard cost`, waste checked against hand arithmetic, are asserted there)."""
from pathlib import Path

import pytest

from actors.config import DnaConfig
from actors.dna_cost import ASSUMED_START_S, ASSUMED_VLLM_TOKENS_PER_S, DnaMeter, plan_cost, plan_table_markdown
from actors.dna_job import DEMO_CONFIG, run_dna
from actors.planner import HostPlan, Plan
from cluster.capacity.ledger import Ledger
from cluster.capacity.prices import load_prices
from cluster.config import load_config
from cluster.models.registry import ModelRegistry
from cluster.store.storage import open_store

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
    """The price table read with yaml, not with cluster/capacity/prices.py: GPUs x rate, else cores x rate."""
    market = row["market"]
    if row["gpus"]:
        return row["gpus"] * prices["gpu"][row["accelerator"]][market]
    return row["cpus"] * prices["cpu"][market]


# A run with one failed and one retried model, its ledger rows and `yard cost` of the job (waste
# checked against hand arithmetic): tests/cluster/capacity/test_cost_cli.py, on the demo-with-faults run
# that test already makes (`_check_the_dna_jobs_cost`), with this module's failing host.


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
    half = ASSUMED_START_S["gpu"] / 2  # the stated host start, shared by the host's two models
    assert units["llama-a"]["phases"]["evaluate"] == 4.0 and units["llama-a"]["phases"]["start"] == half
    assert plan["basis"]["llama-a"].startswith("measured") and plan["basis"]["qwen3-b"] == "assumed"
    assert units["qwen3-b"]["accelerator"] == "H100" and units["qwen3-b"]["phases"]["start"] == half
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


def test_a_dead_hosts_row_books_its_start_and_the_phase_its_last_record_names():
    """Seen in issue 26's round: a fresh host killed while loading was booked as 37 s of generating."""
    import time

    from actors.dna_job import _last_known

    ledger = Ledger("job-1", "dna")
    meter = DnaMeter(ledger)
    asked = time.time() - 37.0
    slot = type("Slot", (), {"plan": HostPlan("host-0", "1xH100", 4, 1, []), "host_id": "host-0.4", "started_at": asked})()
    record = {"phase": "loading", "started_at": asked + 2.0, "host_start": {"host_start_total_s": 14.0}}
    meter.started["m"] = asked
    meter.attempt(slot, "m", {"status": "infra", "reason": "ActorDiedError", **_last_known(record)}, None, 1)
    meter.submitted("n")  # the same host dies later on its second model: its start is on the first row
    meter.attempt(slot, "n", {"status": "infra", "reason": "ActorDiedError", **_last_known(record)}, None, 1)
    meter.submitted("o")  # no record at all: the wall time alone, as before
    meter.attempt(slot, "o", {"status": "infra", "reason": "ActorDiedError", **_last_known(None)}, None, 1)
    first, second, unknown = ledger.entries
    assert first.outcome == "retried" and set(first.phases) == {"start", "load"}
    assert first.phases["start"] == pytest.approx(16.0, abs=0.01)  # 2 s to a process + 14 s of its own start
    assert first.seconds == pytest.approx(37.0, abs=0.5)
    assert set(second.phases) == {"load"} and set(unknown.phases) == {"generate"}
    assert _last_known({"phase": "starting", "started_at": asked}) == {"phase": "starting"}  # not started yet


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


def test_a_fresh_host_per_model_and_the_seeds_node_start_are_priced_and_stated(zoo, tmp_path):
    """Issue 26's two plans in the seed's setting: warm hosts pay one node start and one host start
    per host, the seed's way (`hosts.fresh_per_model`) pays both for every model."""
    from cluster.capacity.cost import money
    from cluster.capacity.prices import DEFAULT_PRICES

    registry = ModelRegistry.load([zoo.registry_path])
    store = open_store(str(tmp_path))
    seed = load_prices(DEFAULT_PRICES.parent / "prices.seed.yaml")
    models = ["llama-a", "qwen3-b", "exaone4-c"]
    warm = plan_cost(DnaConfig(registry=[str(zoo.registry_path)]), _plan([models]), registry, store, probes=8,
                     node_start=seed.node_start)
    fresh_cfg = DnaConfig(registry=[str(zoo.registry_path)], hosts={"fresh_per_model": True})
    fresh = plan_cost(fresh_cfg, _plan([models]), registry, store, probes=8, node_start=seed.node_start)
    w, f = ({u["unit"]: u for u in p["units"]} for p in (warm, fresh))
    # nothing measured: the stated host start (GPU) and the seed's 540 s allocation + 660 s (the middle of 7-15 min)
    start = ASSUMED_START_S["gpu"]
    assert w["llama-a"]["phases"]["start"] == pytest.approx((start + 540) / 3)
    assert f["llama-a"]["phases"]["start"] == pytest.approx(start + 540)
    assert f["llama-a"]["phases"]["load"] - w["llama-a"]["phases"]["load"] == pytest.approx(660 - 660 / 3)
    assert (warm["host_starts"], fresh["host_starts"]) == (1, 3)
    assert {u["where"] for u in warm["units"]} == {"host-0"}
    assert [f[m]["where"] for m in models] == ["host-0", "host-0.2", "host-0.3"]  # the scheduler's names
    seconds = {name: sum(sum(u["phases"].values()) for u in p["units"]) for name, p in (("w", warm), ("f", fresh))}
    assert seconds["f"] - seconds["w"] == pytest.approx(2 * (start + 1200))  # two more hosts, two more nodes
    text = plan_table_markdown(fresh, seed)
    assert "A fresh host per model (`hosts.fresh_per_model`): 3 host starts" in text and "| total | 3 | 3 |" in text
    assert ("- assumed: node start per host started: 540 s allocation and image pull + 420-900 s weight loading, "
            "priced at 1200 s in all (seed 000, lesson 6") in text
    # both ends of 7-15 min: 3 starts x 240 s less or more, at 1 H100-hour's rates (hand arithmetic)
    for load_s, delta in ((420, -240), (900, 240)):
        on_demand = (seconds["f"] + 3 * delta) / 3600 * 3.49
        spot = (seconds["f"] + 3 * delta) / 3600 * 2.09
        assert f"with {load_s} s" in text and money(on_demand) in text and money(spot) in text
    assert "A fresh host per model" not in plan_table_markdown(warm, seed) and "Node start: 1 x" in \
        plan_table_markdown(warm, seed)
    assert "node_start" not in plan_cost(fresh_cfg, _plan([models]), registry, store, probes=8)  # none: unstated


def test_the_measured_host_start_is_a_whole_host_start_not_one_models_share(zoo, tmp_path):
    """A warm host's start is shared by its ledger rows; a plan reading it back adds them up per host."""
    registry = ModelRegistry.load([zoo.registry_path])
    store = open_store(str(tmp_path))
    ledger = Ledger("20260101-000000-aaaa", "dna")
    for mid in ("llama-a", "qwen3-b", "exaone4-c"):  # one host, a 30 s start shared three ways
        ledger.add(unit=mid, node_type="1xH100", accelerator="H100", gpus=1, cpus=1,
                   phases={"start": 10.0, "generate": 5.0}, outcome="kept", where="host-0")
    ledger.add(unit="llama-a-lora", node_type="1xH100", accelerator="H100", gpus=1, cpus=1,
               phases={"start": 50.0, "generate": 5.0}, outcome="kept", where="host-1")
    store.put_bytes("jobs/dna/20260101-000000-aaaa/ledger.jsonl", ledger.to_jsonl().encode())
    plan = plan_cost(DnaConfig(registry=[str(zoo.registry_path)], hosts={"fresh_per_model": True}),
                     _plan([["qwen3-b"]]), registry, store, probes=8)
    assert plan["units"][0]["phases"]["start"] == pytest.approx(40.0)  # (30 + 50) / 2 hosts
    assert plan["basis"]["(host start)"].startswith("measured 40.0 s")


def test_a_new_hosts_process_start_is_booked_as_its_start():
    """The time from asking Ray for a host to its `__init__` running (placing it, a new worker
    process importing modelyard) is cold start: with a fresh host per model it is paid per model."""
    import time

    ledger = Ledger("job-1", "dna")
    meter = DnaMeter(ledger)
    asked = time.time() - 20.0
    slot = type("Slot", (), {"plan": HostPlan("host-0", "cpu", 1, 0, []), "host_id": "host-0", "started_at": asked})()
    raw = {"status": "ok", "host_start_s": 5.0, "host_init_at": asked + 2.0,
           "timings": {"load_s": 1.0, "gate_s": 0.5, "generate_s": 4.0, "embed_s": 1.0}}
    meter.started["m"] = asked  # submitted with the host's creation
    meter.attempt(slot, "m", raw, raw, 1)
    (row,) = ledger.entries
    assert row.phases["start"] == pytest.approx(7.0, abs=0.01)  # 2 s to a process + 5 s of the host's own start
    assert row.seconds == pytest.approx(20.0, abs=0.5)  # idle keeps the rest: the row still sums to the wall


def test_a_vllm_plan_prices_a_new_engine_per_shape_and_a_swap_for_the_next_model_of_it(zoo, tmp_path):
    # llama-a and llama-a-lora share a shape (the registry's family, size and dtype): one engine, one swap
    registry = ModelRegistry.load([zoo.registry_path])
    store = open_store(str(tmp_path / "store"))
    models = ["llama-a", "llama-a-lora", "qwen3-b"]
    vllm = DnaConfig(registry=[str(zoo.registry_path)], engine="vllm")
    plan = plan_cost(vllm, _plan([models]), registry, store, probes=8)
    load = {u["unit"]: u["phases"]["load"] for u in plan["units"]}
    assert plan["basis"] == {"llama-a": "assumed (new engine)", "llama-a-lora": "assumed (weights swapped in)",
                             "qwen3-b": "assumed (new engine)"}
    assert load["llama-a-lora"] < 5 < 90 < load["llama-a"] and load["qwen3-b"] > 90
    assert any(a.startswith("vLLM: a new engine per shape 90 s") for a in plan["assumptions"])
    # vLLM decodes the 8 probes at once (max_num_seqs 256): one round of max_new_tokens, not 8 / batch_size
    one_round = vllm.generation.max_new_tokens / ASSUMED_VLLM_TOKENS_PER_S
    assert all(u["phases"]["generate"] == pytest.approx(one_round) for u in plan["units"])
    assert any(a.startswith(f"vLLM: {ASSUMED_VLLM_TOKENS_PER_S:.0f} new tokens/s per sequence, up to 256 at once")
               for a in plan["assumptions"])
    prices = load_prices()
    assert "Measured:" not in plan_table_markdown(plan, prices)  # assumed, new engine or swap alike
    # the seed's way starts an engine for every model; so does reuse_engine: false
    for cfg in (DnaConfig(registry=[str(zoo.registry_path)], engine="vllm", hosts={"fresh_per_model": True}),
                DnaConfig(registry=[str(zoo.registry_path)], engine={"name": "vllm", "vllm": {"reuse_engine": False}})):
        again = plan_cost(cfg, _plan([models]), registry, store, probes=8)
        assert set(again["basis"].values()) == {"assumed (new engine)"}
    # the HF path is priced as before
    hf = plan_cost(DnaConfig(registry=[str(zoo.registry_path)]), _plan([models]), registry, store, probes=8)
    assert set(hf["basis"].values()) == {"assumed"}


def test_a_model_with_no_fingerprint_is_priced_by_one_of_its_shape_loaded_the_same_way(zoo, tmp_path):
    # issue 26's rerun priced its two new EXAONE copies by the assumption (a new engine 90 s + 2 s/B)
    # though the store had four of their shape measured; llama-a and llama-a-lora share a shape
    registry = ModelRegistry.load([zoo.registry_path])
    store = open_store(str(tmp_path / "store"))
    run = store.new_run("dna", "llama-a")
    run.put_json("timings.json", {"load_s": 40.0, "gate_s": 1.0, "generate_s": 8.0, "embed_s": 2.0, "unload_s": 0.0,
                                  "prompts": 4, "engine_reused": False})
    run.complete()
    vllm = DnaConfig(registry=[str(zoo.registry_path)], engine="vllm")
    plan = plan_cost(vllm, _plan([["llama-a-lora", "qwen3-b"]]), registry, store, probes=8)
    lora = next(u for u in plan["units"] if u["unit"] == "llama-a-lora")
    assert lora["phases"]["load"] == 40.0 and lora["phases"]["generate"] == 17.0  # 8 probes: generation doubles
    assert plan["basis"]["llama-a-lora"].startswith("measured on llama-a, the same shape (run ")
    assert plan["basis"]["llama-a-lora"].endswith(") (new engine)") and plan["basis"]["qwen3-b"] == "assumed (new engine)"
    assert "Measured: llama-a-lora: measured on llama-a" in plan_table_markdown(plan, load_prices())
    # after llama-a the copy swaps its weights in: a new engine's load is not a swap's, so it stays assumed
    swap = plan_cost(vllm, _plan([["llama-a", "llama-a-lora"]]), registry, store, probes=8)
    assert swap["basis"]["llama-a-lora"] == "assumed (weights swapped in)"
    # a fingerprint that does not say how its engine loaded prices vLLM nothing, the HF path alike
    run = store.new_run("dna", "llama-a")
    run.put_json("timings.json", {"load_s": 3.0, "gate_s": 1.0, "generate_s": 8.0, "embed_s": 2.0, "prompts": 4})
    run.complete()
    again = plan_cost(vllm, _plan([["llama-a-lora"]]), registry, store, probes=8)
    assert again["basis"]["llama-a-lora"] == "assumed (new engine)"
    hf = plan_cost(DnaConfig(registry=[str(zoo.registry_path)]), _plan([["llama-a-lora"]]), registry, store, probes=8)
    assert hf["basis"]["llama-a-lora"].startswith("measured on llama-a") and hf["units"][0]["phases"]["load"] == 3.0


def test_a_fingerprint_whose_engine_loaded_the_other_way_prices_all_but_the_load(zoo, tmp_path):
    # (a) swapped llama-a's weights in; the seed's way (a fresh host each) starts an engine for it
    registry = ModelRegistry.load([zoo.registry_path])
    store = open_store(str(tmp_path / "store"))
    for mid, load, reused in (("llama-a", 1.5, True), ("llama-a-lora", 40.0, False)):
        run = store.new_run("dna", mid)
        run.put_json("timings.json", {"load_s": load, "gate_s": 1.0, "generate_s": 8.0, "embed_s": 2.0, "prompts": 8,
                                      "engine_reused": reused})
        run.complete()
    fresh = DnaConfig(registry=[str(zoo.registry_path)], engine="vllm", hosts={"fresh_per_model": True})
    plan = plan_cost(fresh, _plan([["llama-a", "llama-a-lora"]]), registry, store, probes=8)
    load = {u["unit"]: u["phases"]["load"] for u in plan["units"]}
    gen = {u["unit"]: u["phases"]["generate"] for u in plan["units"]}
    assert load == {"llama-a": 40.0, "llama-a-lora": 40.0} and gen == {"llama-a": 9.0, "llama-a-lora": 9.0}
    assert plan["basis"]["llama-a"].startswith("measured (run ") and "loaded the other way); its load (new engine): " \
        "measured on llama-a-lora (run " in plan["basis"]["llama-a"]
    assert plan["basis"]["llama-a-lora"].startswith("measured (run ") and "other way" not in plan["basis"]["llama-a-lora"]
    # warm, the other order: each is now loaded the way the other one was measured
    warm = plan_cost(DnaConfig(registry=[str(zoo.registry_path)], engine="vllm"), _plan([["llama-a", "llama-a-lora"]]),
                     registry, store, probes=8)
    assert {u["unit"]: u["phases"]["load"] for u in warm["units"]} == {"llama-a": 40.0, "llama-a-lora": 1.5}
    # no fingerprint of the wanted way in the store: the load is the stated assumption, the rest measured
    alone = open_store(str(tmp_path / "alone"))
    run = alone.new_run("dna", "llama-a")
    run.put_json("timings.json", {"load_s": 1.5, "gate_s": 1.0, "generate_s": 8.0, "embed_s": 2.0, "prompts": 8,
                                  "engine_reused": True})
    run.complete()
    solo = plan_cost(fresh, _plan([["llama-a"]]), registry, alone, probes=8)
    (unit,) = solo["units"]
    assert unit["phases"]["load"] == pytest.approx(90.0 + 2.0 * registry.get("llama-a").params_b)
    assert unit["phases"]["generate"] == 9.0 and solo["basis"]["llama-a"].endswith("its load (new engine): assumed")
    assert any(a.startswith("vLLM: a new engine per shape 90 s") for a in solo["assumptions"])
