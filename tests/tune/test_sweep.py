"""`yard sweep`: bad input rejected before any trial; a real sweep on local Ray, killed mid-way and
resumed with `--resume` (Tuner.restore) without rerunning a finished trial; published results."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cluster.config import ConfigError, UserError, load_config
from tune.config import SweepConfig
from tune.sweep import validate

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "sweep.demo.yaml"


def _cfg(zoo, tmp_path, *overrides):
    return load_config(DEMO, SweepConfig, ["zoo=null", f"registry=[{zoo.registry_path}]",
                                            f"storage.uri={tmp_path / 'store'}", *overrides])


def _validate(zoo, tmp_path, *overrides):
    cfg = _cfg(zoo, tmp_path, *overrides)
    return validate(cfg, str(DEMO), [str(zoo.registry_path)])


def test_demo_config_validates(zoo, tmp_path):
    checked = _validate(zoo, tmp_path)
    assert checked.layers == 6
    assert len(checked.items) == 48  # count 40 + holdout 8
    assert [b.spec.name for b in checked.benchmarks] == ["zoo_qa", "zoo_mcq"]
    assert checked.cuda_capabilities == ()


@pytest.mark.parametrize("overrides, message", [
    (["search.space.prune_depth={grid: [1, 6]}"], r"search.space.prune_depth: 6 >= 6, the decoder layers of exaone4-c"),
    (["search.space.quant={grid: [none, FP8]}"], r"search.space.quant: .*FP8.*8.9"),
    (["search.space.quant={value: FP8_DYNAMIC}"], r"search.space.quant: .*FP8_DYNAMIC.*8.9"),
    (["calibration.source=zoo:nosuchtopic"], r"calibration.source: zoo:nosuchtopic: unknown topic"),
    (["calibration.count=200"], r"calibration.count: .* 208 needed"),
    (["eval.engine=vllm", f"eval.benchmarks=[{{name: qa, task: qa, source: {REPO / 'configs/bench/zoo_qa.jsonl'}}}]"],
     r"resources.gpus_per_trial: 0: eval.engine vllm evaluates on whole GPUs"),
    (["eval.engine=vllm", "resources.gpus_per_trial=0.5",
      f"eval.benchmarks=[{{name: qa, task: qa, source: {REPO / 'configs/bench/zoo_qa.jsonl'}}}]"],
     r"resources.gpus_per_trial: 0.5: eval.engine vllm"),
    (["quant.python=/nonexistent/python"], r"quant.python: /nonexistent/python: no such executable"),
])
def test_bad_input_rejected_before_any_trial(zoo, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message) as info:
        _validate(zoo, tmp_path, *overrides)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "store").exists()  # nothing ran, nothing written


def test_empty_calibration_file_and_wrong_benchmark_schema(zoo, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(ConfigError, match="empty calibration set"):
        _validate(zoo, tmp_path, f"calibration.source={empty}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "options": ["a", "b"], "answer": 1}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1.*solution"):
        _validate(zoo, tmp_path, f"eval.benchmarks=[{{name: b, task: mcq, source: {bad}}}]")


@pytest.mark.parametrize("overrides, message", [
    (["search.space.quant={grid: [none, INT3]}"], r"quant: 'INT3' is not a quantization scheme"),
    (["search.space.lora_rank={grid: [-1]}"], r"lora_rank: -1 is not an integer >= 0"),
    (["search.algorithm=optuna"], r"Optuna cannot search grids"),
    (["search.space.kd_samples={value: 41}"], r"kd_samples: 41 > calibration.count 40"),
    (["search.space.ffn_keep_ratio={value: 1.5}"], r"ffn_keep_ratio: 1.5 is not in \(0, 1\]"),
    (["eval.engine=vllm"], r"eval.*'zoo_mcq': mode loglikelihood needs engine hf"),
])
def test_bad_config_values_fail_at_load(zoo, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        _cfg(zoo, tmp_path, *overrides)
    assert "\n" not in str(info.value)


def _yard(args, env, log):
    return subprocess.Popen([sys.executable, "-m", "cluster", *args], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _starts(store_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in (store_dir / "_state" / "sweeps").rglob("starts/*"):
        trial = f.name.rsplit("-", 1)[0]
        counts[trial] = counts.get(trial, 0) + 1
    return counts


def _done_candidates(store_dir: Path) -> list[str]:
    return sorted(p.parent.parent.name for p in (store_dir / "candidate").glob("*/*/_COMPLETE.json"))


@pytest.mark.timeout(600)
def test_sweep_killed_and_resumed_runs_no_finished_trial_twice(zoo, tmp_path):
    """2 trials, one at a time. The driver is SIGKILLed once the first candidate is complete;
    `yard sweep --resume` finishes the rest without starting the first again. The resumed run
    also shows the shared work is cached: 0 teacher passes and the baseline from the store."""
    zoo_dir = tmp_path / "zoo"
    shutil.copytree(zoo.zoo_dir, zoo_dir)  # candidates are registered: keep the shared test zoo clean
    store_dir = tmp_path / "store"
    cfg = yaml.safe_load(DEMO.read_text())
    cfg.update(name="t", zoo=None, registry=[str(zoo_dir / "models.yaml")], storage={"uri": str(store_dir)})
    cfg["calibration"].update(count=16, holdout=4)
    cfg["kd"].update(steps=4)
    cfg["heal"].update(steps=4)
    cfg["quant"].update(num_calibration_samples=4)
    for bench in cfg["eval"]["benchmarks"]:
        bench["source"] = str(REPO / "configs" / bench["source"])
        bench["limit"] = 6
    cfg["eval"]["max_new_tokens"] = 16
    cfg["timing"] = {"rounds": 2, "prompts": 4, "new_tokens": 8}
    cfg["search"] = {"algorithm": "grid", "max_concurrent_trials": 1,
                     "space": {"prune_depth": {"grid": [0, 2]}, "kd_samples": {"value": 8},
                               "lora_rank": {"value": 4}, "quant": {"value": "none"}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "YARD_DASHBOARD": "0", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")

    with open(tmp_path / "first.log", "w") as log:
        proc = _yard(["sweep", str(path)], env, log)
        deadline = time.time() + 300
        while time.time() < deadline and not _done_candidates(store_dir):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
        assert _done_candidates(store_dir), "no trial finished in 300 s"
        # At once: whether or not Tune's experiment state already records the trial as finished,
        # the resumed sweep must not run it again.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished_before = _done_candidates(store_dir)
    starts_before = _starts(store_dir)
    assert len(finished_before) >= 1 and not list((store_dir / "sweep").glob("t/*/_COMPLETE.json"))

    with open(tmp_path / "resume.log", "w") as log:
        proc = _yard(["sweep", str(path), "--resume"], env, log)
        assert proc.wait(timeout=400) == 0, (tmp_path / "resume.log").read_text()[-4000:]
    assert "Tuner.restore" in (tmp_path / "resume.log").read_text()

    starts = _starts(store_dir)
    assert len(starts) == 2
    for cand in finished_before:
        trial = cand.rsplit(".", 1)[-1]
        assert starts[trial] == 1, f"finished trial {trial} was started again: {starts}"
    assert sum(starts.values()) - sum(starts_before.values()) == 2 - len(finished_before)

    run_dir = next((store_dir / "sweep" / "t").glob("*/_COMPLETE.json")).parent
    rows = json.loads((run_dir / "rows.json").read_text())
    assert sorted(r["prune_depth"] for r in rows) == [0, 2]
    assert all(r["status"] == "ok" and r["score"] >= 0 for r in rows)
    assert {r["layers"] for r in rows} == {6, 4}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["teacher_forward_passes"] == 0 and summary["baseline_cached"] is True
    # the resumed run still times every candidate in its timing phase, beside the base
    timing = json.loads((run_dir / "timing.json").read_text())
    assert set(timing["models"]) == {"__baseline__", *(r["trial_id"] for r in rows)}
    first_teacher = json.loads(next((store_dir / "teacher").glob("exaone4-c/*/_COMPLETE.json")).read_text())
    assert first_teacher["teacher_forward_passes"] == 8  # the first run: kd_samples texts, once
    with open(run_dir / "leaderboard.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert (run_dir / "pareto.png").stat().st_size > 1000
    md = (run_dir / "leaderboard.md").read_text()
    assert all(r["trial_id"] in md for r in rows)
    # the ranking as data, for `yard serve --from-leaderboard`: best Score first
    ranked = json.loads((run_dir / "ranked.json").read_text())
    assert [r["rank"] for r in ranked] == [1, 2]
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in rows), reverse=True)

    registry = yaml.safe_load((zoo_dir / "models.yaml").read_text())["models"]
    children = [m for m, s in registry.items() if s.get("parent") == "exaone4-c" and m.startswith("t.")]
    assert len(children) == 2
    tune_dir = Path(summary["tune_dir"])
    assert list(tune_dir.rglob("events.out.tfevents*")) and list(tune_dir.rglob("progress.csv"))


@pytest.mark.timeout(400)
def test_sweep_on_s3_store(zoo, tmp_path, s3_uri):
    """storage.uri s3://: the prepare caches, candidates and results go to S3 over HTTP (moto's server),
    and Tune's own experiment files go beside them (pyarrow's S3 filesystem)."""
    import boto3

    uri, endpoint = s3_uri
    cfg = yaml.safe_load(DEMO.read_text())
    cfg.update(name="s3t", zoo=None, registry=[str(zoo.registry_path)],
               storage={"uri": uri, "endpoint_url": endpoint})
    cfg["calibration"].update(count=8, holdout=2)
    cfg["kd"].update(steps=2)
    cfg["heal"].update(steps=2)
    cfg["quant"].update(num_calibration_samples=2)
    for bench in cfg["eval"]["benchmarks"]:
        bench["source"] = str(REPO / "configs" / bench["source"])
        bench["limit"] = 4
    cfg["eval"]["max_new_tokens"] = 8
    cfg["timing"] = {"rounds": 2, "prompts": 4, "new_tokens": 8}
    # one trial: the store is what is tested here; the grid, resume and ranking in the test above
    cfg["search"] = {"algorithm": "grid", "max_concurrent_trials": 1,
                     "space": {"prune_depth": {"grid": [1]}, "kd_samples": {"value": 4},
                               "lora_rank": {"value": 0}, "quant": {"value": "none"}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "YARD_DASHBOARD": "0"}
    env.pop("RAY_ADDRESS", None)
    with open(tmp_path / "s3.log", "w") as log:
        proc = _yard(["sweep", str(path)], env, log)
        assert proc.wait(timeout=350) == 0, (tmp_path / "s3.log").read_text()[-4000:]
    bucket, prefix = uri[len("s3://"):].split("/", 1)
    keys = [o["Key"] for page in boto3.client("s3", endpoint_url=endpoint).get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
    assert any(k.endswith("/leaderboard.md") and "/sweep/s3t/" in k for k in keys)
    assert sum(k.endswith("/model/config.json") and "/candidate/" in k for k in keys) == 1
    assert any("/teacher/exaone4-c/" in k for k in keys) and any("/baseline/exaone4-c/" in k for k in keys)
    assert any("/tune/s3t-" in k and k.endswith("progress.csv") for k in keys)
