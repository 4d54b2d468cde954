"""What a `yard dna` rerun reuses, decided over a LocalStore of small fake runs (written by the
host's own writers): no Ray, no model, no encoder."""
import numpy as np
import pytest
import yaml

from actors.config import DnaConfig
from actors.dna_reuse import decide_rerun
from actors.fingerprint import ProbeSet, make_provenance, probes_sha256, responses_payload
from actors.host import ModelHost
from actors.planner import NodeKind, plan_hosts
from cluster.models.registry import ModelRegistry
from cluster.store.storage import open_store

PROBES = ["Describe a walk in the forest.", "What should I cook tonight?", "Plan a two-day city trip."]
PROBE_SET = ProbeSet(PROBES, "test-probes_3", probes_sha256(PROBES), source="test")
CPU = [NodeKind("cpu", count=1, cpus=2, gpus=0, cuda_capability=None, gpu_mem_gib=None, cpu_mem_gib=8.0)]
DIM = 8


@pytest.fixture
def world(tmp_path):
    """Four tiny 'models' (a config and a weights file each) in a registry, and an empty store."""
    entries = {}
    for mid in ("a", "b", "c", "d"):
        folder = tmp_path / "models" / mid
        folder.mkdir(parents=True)
        (folder / "config.json").write_text('{"hidden_size": 8}')
        (folder / "model.safetensors").write_bytes(mid.encode() * 64)
        entries[mid] = {"source": str(folder), "params_b": 0.001, "family": "llama"}
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"kind": "models", "models": entries}))
    registry = ModelRegistry.load([str(tmp_path / "models.yaml")])
    return tmp_path, registry, open_store(str(tmp_path / "store"))


def config(**dna) -> DnaConfig:
    return DnaConfig.model_validate({"dna": {"dna_dim": DIM, **dna}})


def decide(store, registry, ids, cfg=None, **flags):
    cfg = cfg or config()
    return decide_rerun(store, cfg, registry, plan_hosts(ids, registry, CPU), PROBE_SET, **flags)


def write_run(store, mid, key, status="ok", signature=None, answer="An answer long enough to pass the gates. " * 4):
    """One DNA run as a host writes it (`ModelHost._finish_run`); returns its prefix."""
    run = store.new_run("dna", mid)
    run.put_json("responses.json", responses_payload(mid, PROBE_SET.probe_set_id, PROBES, [answer] * len(PROBES), {}))
    out = {"model_id": mid, "status": status, "gate": None, "error_signature": signature, "timings": {},
           "reason": f"model {mid}: generating: {signature}" if signature else ""}
    vector = np.linspace(0.1, 1.0, DIM) if status == "ok" else None
    ModelHost._finish_run(run, out, vector, make_provenance(config(), PROBE_SET.sha256, config().encoder.name),
                          {}, key)
    return run.prefix


def keys_of(store, registry, ids):
    return decide(store, registry, ids).keys


def test_an_unchanged_fingerprint_is_reused_and_only_new_models_are_generated(world):
    _, registry, store = world
    keys = keys_of(store, registry, ["a", "b"])
    runs = {mid: write_run(store, mid, keys[mid]) for mid in ("a", "b")}
    # a finished round of a and b; this round adds c and d
    rerun = decide(store, registry, ["a", "b", "c", "d"])
    assert {m: o["reused_from"] for m, o in rerun.reused.items()} == runs
    assert all(o["status"] == "reused" for o in rerun.reused.values())
    assert rerun.todo(["a", "b", "c", "d"]) == ["c", "d"]
    assert rerun.generate == {"c": ("new", "no earlier run"), "d": ("new", "no earlier run")}
    assert rerun.summary_line(4) == ("reused 2 of 4 fingerprints from earlier runs (same weights and settings); "
                                     "generating 2 (2 new)")
    assert rerun.reused["a"]["stats"]["valid_fraction"] == 1.0  # re-validated from its responses.json
    assert rerun.notes == []


def test_changed_weights_or_settings_are_generated_again(world):
    tmp_path, registry, store = world
    keys = keys_of(store, registry, ["a", "b"])
    for mid in ("a", "b"):
        write_run(store, mid, keys[mid])
    (tmp_path / "models" / "a" / "model.safetensors").write_bytes(b"retrained" * 64)
    rerun = decide(store, registry, ["a", "b"])
    assert set(rerun.reused) == {"b"} and rerun.generate["a"][0] == "changed"
    assert "b" in rerun.keys and rerun.keys["a"] != keys["a"]  # the new run records the new key
    # a setting that shapes every vector: nothing is reused
    rerun = decide(store, registry, ["a", "b"], cfg=config(projection_seed=7))
    assert rerun.reused == {} and {why for why, _ in rerun.generate.values()} == {"changed"}


def test_a_run_without_a_reuse_key_is_generated_again(world):
    _, registry, store = world
    write_run(store, "a", None)  # made before runs carried a key
    rerun = decide(store, registry, ["a"])
    assert rerun.reused == {} and "no reuse key" in rerun.generate["a"][1]


def test_force_generates_everything_and_says_so_when_there_was_nothing_earlier(world):
    _, registry, store = world
    rerun = decide(store, registry, ["a", "b"], force=True)
    assert rerun.todo(["a", "b"]) == ["a", "b"]
    assert rerun.notes == [f"--force: no earlier DNA runs of these models in {store.uri}; every model is generated anyway"]
    keys = keys_of(store, registry, ["a"])
    write_run(store, "a", keys["a"])
    rerun = decide(store, registry, ["a", "b"], force=True)
    assert rerun.reused == {} and rerun.generate["a"][0] == "forced"
    assert rerun.notes == ["--force: reuse off; generating all 2 model(s) again"]


def test_failed_is_generated_again_and_skipped_is_not_unless_retry_skipped(world):
    _, registry, store = world
    keys = keys_of(store, registry, ["a", "b", "c"])
    write_run(store, "a", keys["a"])
    write_run(store, "a", keys["a"], status="failed", signature="GateFailure: sanity")  # failed last time
    write_run(store, "b", keys["b"], status="error", signature="RuntimeError: size mismatch")
    write_run(store, "b", keys["b"], status="error", signature="RuntimeError: size mismatch")  # skipped
    write_run(store, "c", keys["c"], status="error", signature="RuntimeError: flaky")
    write_run(store, "c", keys["c"], status="error", signature="OSError: disk")  # two different errors: failed
    rerun = decide(store, registry, ["a", "b", "c"])
    assert rerun.todo(["a", "b", "c"]) == ["a", "c"]
    assert rerun.generate["a"][0] == "failed" and rerun.generate["c"][0] == "failed"
    (skipped,) = rerun.outcomes()
    assert skipped["model_id"] == "b" and skipped["status"] == "skipped" and skipped["attempts"] == 0
    assert "same error twice" in skipped["reason"] and "RuntimeError: size mismatch" in skipped["reason"]
    assert any(n.startswith("not retried: b:") and "--retry-skipped" in n for n in rerun.notes)
    assert rerun.summary_line(3).endswith("; not retrying 1 skipped before")

    rerun = decide(store, registry, ["a", "b", "c"], retry_skipped=True)
    assert rerun.todo(["a", "b", "c"]) == ["a", "b", "c"] and rerun.generate["b"][0] == "skipped"
    # a new model goes first: the ones that failed before queue behind it, in their order
    rerun = decide(store, registry, ["a", "b", "c", "d"])
    assert rerun.todo(["a", "b", "c", "d"]) == ["d", "a", "c"]


def test_a_skip_is_lifted_when_the_weights_change(world):
    tmp_path, registry, store = world
    keys = keys_of(store, registry, ["b"])
    for _ in range(2):
        write_run(store, "b", keys["b"], status="error", signature="RuntimeError: size mismatch")
    (tmp_path / "models" / "b" / "config.json").write_text('{"hidden_size": 16}')  # the user fixed it
    rerun = decide(store, registry, ["b"])
    assert rerun.not_retried == {} and rerun.todo(["b"]) == ["b"]


def test_retry_skipped_with_nothing_skipped_is_a_note(world):
    _, registry, store = world
    rerun = decide(store, registry, ["a"], retry_skipped=True)
    assert rerun.notes == [f"--retry-skipped: no earlier DNA runs of these models in {store.uri}; nothing to retry"]
    write_run(store, "a", keys_of(store, registry, ["a"])["a"])
    rerun = decide(store, registry, ["a"], retry_skipped=True)
    assert set(rerun.reused) == {"a"}
    assert rerun.notes == [f"--retry-skipped: no model of this job was skipped in an earlier run in {store.uri}; "
                           "nothing to retry"]


@pytest.mark.parametrize("damage, file", [
    ("delete", "dna.npy"), ("garble", "dna.npy"), ("delete", "responses.json"), ("garble", "responses.json"),
    ("truncate", "dna.npy"),
])
def test_a_reusable_run_with_a_broken_file_is_generated_again_with_a_line_saying_why(world, damage, file):
    _, registry, store = world
    keys = keys_of(store, registry, ["a", "b"])
    prefix = write_run(store, "a", keys["a"])
    write_run(store, "b", keys["b"])
    path = store.root / prefix / file
    if damage == "delete":
        path.unlink()
    elif damage == "garble":
        path.write_bytes(b"\x00not what was written\xff")
    else:
        path.write_bytes(path.read_bytes()[:40])
    rerun = decide(store, registry, ["a", "b"])
    assert set(rerun.reused) == {"b"} and rerun.todo(["a", "b"]) == ["a"]
    why, detail = rerun.generate["a"]
    assert why == "unusable" and f"{prefix}/{file}: unreadable" in detail
    (note,) = rerun.notes
    assert note.startswith(f"not reused: a: {prefix}/{file}: unreadable") and note.endswith("; generating it again")


def test_answers_that_fail_todays_gates_are_not_reused(world):
    _, registry, store = world
    write_run(store, "a", keys_of(store, registry, ["a"])["a"], answer="short")  # passed laxer gates then
    rerun = decide(store, registry, ["a"])
    assert rerun.reused == {} and "fails today's validation gate" in rerun.generate["a"][1]


def test_a_model_whose_files_cannot_be_read_here_is_generated_with_a_line_saying_why(world):
    tmp_path, registry, store = world
    keys = keys_of(store, registry, ["a"])
    write_run(store, "a", keys["a"])
    for f in (tmp_path / "models" / "a").iterdir():  # e.g. a path that only the workers' nodes have
        f.unlink()
    rerun = decide(store, registry, ["a"])
    assert rerun.reused == {} and "a" not in rerun.keys and rerun.generate["a"][0] == "unkeyed"
    (note,) = rerun.notes
    assert note.startswith("not reused: a: cannot identify its weights here (FileNotFoundError: ")
