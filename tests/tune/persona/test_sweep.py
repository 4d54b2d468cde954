"""tune/persona/sweep.py: the persona_sweep config, ranking, the leaderboard, and a two-trial sweep
on local Ray (its trials probe in-process: tests/tune/persona/test_probe.py)."""
import csv
from pathlib import Path

import pytest
import yaml

from cluster.config import ConfigError, load_config, validate
from cluster.store.storage import open_store
from tune.persona import sweep

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**extra):
    data = {"kind": "persona_sweep", "persona": {"base": "qwen3-b", "prep": {"data_dir": "x"}, "lora": {"r": 8, "alpha": 16}}}
    data.update(extra)
    return validate(data, sweep.PersonaSweepConfig, "test")


def test_demo_config_loads_with_four_trials():
    cfg = load_config(sweep.DEMO_CONFIG, sweep.PersonaSweepConfig)
    assert cfg.search.trial_count() == 4 and cfg.persona.dpo is None


@pytest.mark.parametrize("space,needle", [({"lora_r": {"grid": [0, 8]}}, "lora_r: 0 is not an integer >= 1"),
                                          ({"sft_lr": {"value": -1}}, "sft_lr: -1 is not a number > 0"),
                                          ({"lora_r": {"grid": [4], "value": 4}}, "exactly one of")])
def test_bad_space_names_the_dimension(space, needle):
    with pytest.raises(ConfigError, match=r"search\.space") as err:
        _cfg(search={"space": space})
    assert needle in str(err.value)


def test_trial_config_sets_rank_lr_and_keeps_alpha_ratio():
    cfg = sweep.trial_config(_cfg().persona.model_dump(), 32, 3e-4)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.sft.lr) == (32, 64, 3e-4)


def test_rank_by_consistency_then_heldout_loss_errors_last(tmp_path):
    rows = [
        {"trial_id": "a", "probe_consistency": 0.5, "heldout_loss": 2.0, "status": "ok"},
        {"trial_id": "b", "probe_consistency": 0.7, "heldout_loss": 3.0, "status": "ok"},
        {"trial_id": "c", "probe_consistency": 0.5, "heldout_loss": 1.5, "status": "ok"},
        {"trial_id": "d", "probe_consistency": None, "heldout_loss": None, "status": "error", "error": "boom"},
    ]
    ranked = sweep.rank_persona_rows(rows)
    assert [(r["trial_id"], r["rank"]) for r in ranked] == [("b", 1), ("c", 2), ("a", 3), ("d", None)]
    paths = sweep.write_persona_leaderboard(ranked, tmp_path, "t")
    table = list(csv.DictReader(paths["csv"].open()))
    assert [r["trial_id"] for r in table] == ["b", "c", "a", "d"] and table[3]["error"] == "boom"
    assert "| 1 | b |" in paths["md"].read_text()


def test_two_trial_sweep_publishes_a_ranked_leaderboard(zoo, tmp_path, ray_local):
    data = yaml.safe_load(Path(sweep.DEMO_CONFIG).read_text())
    data["persona"].update(zoo=None, registry=[str(zoo.registry_path)], storage={"uri": str(tmp_path / "store")})
    data["persona"]["sft"]["max_steps"] = 1
    data["persona"]["probe"]["max_tokens"] = 4
    data["search"]["space"] = {"lora_r": {"grid": [2, 4]}, "sft_lr": {"value": 1e-3}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    cfg = load_config(path, sweep.PersonaSweepConfig)
    code, summary = sweep.run_persona_sweep(cfg, config_path=str(sweep.DEMO_CONFIG))
    assert code == 0, summary["rows"]
    assert [r["rank"] for r in summary["rows"]] == [1, 2]
    assert sorted(r["lora_r"] for r in summary["rows"]) == [2, 4]
    assert all(r["heldout_loss"] is not None and r["probe_consistency"] is not None for r in summary["rows"])
    store = open_store(str(tmp_path / "store"))
    prefix = f"persona_sweep/{cfg.name}/{summary['run']}"
    keys = set(store.list_keys(prefix + "/"))
    assert {f"{prefix}/leaderboard.md", f"{prefix}/leaderboard.csv", f"{prefix}/_COMPLETE.json"} <= keys
    # the job's own stages wrote them: trials/<id>/sft/adapter, as the job's sft/adapter
    assert sum(k.endswith("/sft/adapter/adapter_config.json") and "/trials/" in k for k in keys) == 2
    # a ledger row per trial, timed by Tune as the driver saw it; the leaderboard ends with the cost line
    import json

    (ledger,) = [k for k in store.list_keys("jobs/") if k.endswith("/ledger.jsonl")]
    entries = [json.loads(line) for line in store.get_bytes(ledger).decode().splitlines()]
    assert sorted(e["unit"] for e in entries) == sorted(f"trial {r['trial_id']}" for r in summary["rows"])
    assert all(e["outcome"] == "kept" and e["node_type"] == "cpu" and e["phases"]["train"] > 0 for e in entries)
    board = store.get_bytes(f"{prefix}/leaderboard.md").decode()
    last = [ln for ln in board.splitlines() if ln.strip()][-1]
    assert last == summary["cost"] and last.startswith("Cost: $") and "(2 kept)" in last
