"""`yard demo sweep serve persona` end to end on a local Ray and the toy zoo: the demo's second
half (the first, and what both share, in test_demo.py)."""
import pytest

from cluster.store.storage_local import LocalStore
from tests.cluster.test_demo import run_demo_steps

pytestmark = pytest.mark.slow


def test_the_sweep_serve_and_persona_steps_run_and_print_reports(ray_local, zoo, tmp_path, capsys, monkeypatch):
    import tune.sweep.sweep

    # the quick sweep's 2 x 2 grid on one depth: two trials, one of them quantized (the wiring is
    # tested, not the grid: tests/tune/sweep/; test_demo.py's docstring says why)
    load_config = tune.sweep.sweep.load_config
    monkeypatch.setattr(tune.sweep.sweep, "load_config",
                        lambda path, kind, overrides: load_config(path, kind, [*overrides, "search.space.prune_depth={value: 2}"]))
    store, out, registered = run_demo_steps(["sweep", "serve", "persona"], zoo, tmp_path, capsys, monkeypatch)
    assert "sweep      ok" in out and f"report: {store}/sweep/demo-quick/" in out
    assert "serve      ok" in out and f"report: {store}/probe/" in out  # Serve -> judge -> probes
    assert "persona    ok" in out and f"report: {store}/persona/" in out  # prep -> SFT -> DPO -> merge -> probes
    assert "chat " not in out.split("yard demo summary")[1]  # only the steps asked for
    children = {m: s for m, s in registered.items() if m.startswith("demo-quick.")}
    assert 1 <= len(children) <= 2 and all(s["parent"] == "exaone4-c" for s in children.values())
    _check_persona_step(LocalStore(str(store)), registered)


def _check_persona_step(store, registered):
    """The persona step (the demo config as shipped: prep -> SFT -> DPO -> merge -> lineage ->
    probes of base and child): the fine-tune teaches the persona."""
    (run,) = store.runs("persona", "seoyun-demo")
    prefix = run.prefix
    files = set(store.list_keys(prefix + "/"))
    for name in ("prep_report.md", "lengths.png", "sft/adapter/adapter_config.json", "dpo/adapter/adapter_config.json",
                 "model/config.json", "losses.png", "report.md", "summary.json"):
        assert f"{prefix}/{name}" in files, name
    summary = store.get_json(f"{prefix}/summary.json")
    assert [s["stage"] for s in summary["stages"]] == ["sft", "dpo"]
    assert [s["steps"] for s in summary["stages"]] == [120, 4]
    sft_losses = [r["loss"] for r in summary["stages"][0]["log"] if "loss" in r]
    assert sft_losses[-1] < sft_losses[0] / 4                  # measured 10.7 -> 0.8 (held-out 0.55)
    child = registered["qwen3-b.seoyun-demo"]                 # registered in the zoo it ran on
    assert (child["parent"], child["derivation"]) == ("qwen3-b", "persona")
    cands = {c["variant"]: c["conditions"] for c in summary["probe"]["candidates"]}
    assert set(cands) == {"merged", "base"}
    for conds in cands.values():
        assert set(conds) == {"with_system", "without_system"} and conds["without_system"]["probes"] > 0
    # without the system prompt the child beats its base on facts and identity (measured: facts
    # 0% -> 75%, identity 50% -> 100%, all probes 35% -> 83%)
    base, tuned = cands["base"]["without_system"], cands["merged"]["without_system"]
    assert tuned["groups"]["fact"]["pass_rate"] >= base["groups"]["fact"]["pass_rate"] + 0.25
    assert tuned["groups"]["identity"]["pass_rate"] > base["groups"]["identity"]["pass_rate"]
    assert tuned["pass_rate"] >= base["pass_rate"] + 0.15
    report = store.get_bytes(f"{prefix}/report.md").decode()
    assert "| | base, with system | child, with system | base, without system | child, without system |" in report
    assert "\n| fact | " in report and "\n| fact cat | " in report and "Judge: replayed" in report
    assert "| sft | 120 | 120 |" in report                    # projected and actual steps side by side
    assert summary["child"]["registered"] is True and summary["prep"]["bad_lines"] == 7
