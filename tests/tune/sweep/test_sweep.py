"""`yard sweep`: bad input rejected before any trial; a real sweep on local Ray, killed mid-way and
resumed with `--resume` (Tuner.restore) without rerunning a finished trial; published results."""
import csv
import json
import os
import secrets
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
from tune.sweep.sweep import validate

REPO = Path(__file__).resolve().parents[3]
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


def two_gpu_base_registry(zoo, tmp_path) -> Path:
    """The zoo's registry with the sweep's base, exaone4-c, on num_gpus 2 (a model that needs tensor
    parallel), sources made absolute: its path."""
    models = yaml.safe_load(Path(zoo.registry_path).read_text())
    for spec in models["models"].values():
        spec["source"] = str((Path(zoo.registry_path).parent / spec["source"]).resolve())
    models["models"]["exaone4-c"]["num_gpus"] = 2
    path = tmp_path / "two-gpu-base.yaml"
    path.write_text(yaml.safe_dump(models))
    return path


def test_a_vllm_sweep_gives_each_trial_the_gpus_its_base_runs_on(zoo, tmp_path):
    # a candidate runs in vLLM as its base does, tensor parallel over the base's num_gpus: a trial
    # with fewer GPUs would either fail in vLLM or compare candidate and base on different hardware
    registry = two_gpu_base_registry(zoo, tmp_path)
    qa = f"eval.benchmarks=[{{name: qa, task: qa, source: {REPO / 'configs/bench/zoo_qa.jsonl'}}}]"
    cfg = _cfg(zoo, tmp_path, f"registry=[{registry}]", "eval.engine=vllm", "resources.gpus_per_trial=1", qa)
    with pytest.raises(ConfigError) as info:
        validate(cfg, str(DEMO), [str(registry)])
    assert str(info.value) == (f"{DEMO}: resources.gpus_per_trial: 1: eval.engine vllm runs each candidate as its "
                               f"base exaone4-c runs, on num_gpus 2 ({registry}): at least 2")
    assert not (tmp_path / "store").exists()


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


def _kill_run(token: str, timeout_s: float = 30.0) -> None:
    """SIGKILL every process of a `yard` run started with YARD_TEST_RUN=token in its environment (the
    driver, the local Ray it started, that Ray's workers: all inherit it) and wait until none is
    left, so that nothing of it writes to the store afterwards (a trial's start record did once)."""
    mark = f"YARD_TEST_RUN={token}".encode()
    deadline = time.time() + timeout_s
    while True:
        left = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and mark in (entry / "environ").read_bytes().split(b"\0"):
                    left.append(int(entry.name))  # a zombie has no environ left: it is not counted
            except OSError:
                continue
        if not left:
            return
        assert time.time() < deadline, f"processes of the killed run still running: {left}"
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def _starts(store) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in store.list_state("sweeps/"):
        if "/starts/" in key:
            trial = key.rsplit("/", 1)[-1].rsplit("-", 1)[0]
            counts[trial] = counts.get(trial, 0) + 1
    return counts


def _done_candidates(store) -> list[str]:
    return sorted(k.split("/")[1] for k in store.list_keys("candidate/") if k.endswith("/_COMPLETE.json"))


@pytest.mark.timeout(600)
def test_sweep_killed_and_resumed_runs_no_finished_trial_twice(zoo, tmp_path, s3_uri):
    """2 trials, one at a time, on an S3 store (moto's server over HTTP): the prepare caches,
    candidates and results go to S3, and Tune's own experiment files beside them (pyarrow's S3
    filesystem). The driver and its Ray are SIGKILLed once the first candidate is complete; `yard
    sweep --resume` restores Tune's experiment from S3 and finishes the rest without starting the
    first again. The resumed run also shows the shared work is cached: 0 teacher passes and the
    baseline from the store. (Registering candidates in the zoo, a local-store feature, is tested
    by the demo.)"""
    from cluster.store.storage import open_store

    uri, endpoint = s3_uri
    store = open_store(uri, endpoint)
    zoo_dir = tmp_path / "zoo"
    shutil.copytree(zoo.zoo_dir, zoo_dir)  # were a candidate registered, the shared test zoo stays clean
    registry_before = (zoo_dir / "models.yaml").read_text()
    cfg = yaml.safe_load(DEMO.read_text())
    cfg.update(name="t", zoo=None, registry=[str(zoo_dir / "models.yaml")],
               storage={"uri": uri, "endpoint_url": endpoint})
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
    env = {**os.environ, "YARD_DASHBOARD": "0", "YARD_TEST_RUN": secrets.token_hex(8)}
    env.pop("RAY_ADDRESS", None)

    with open(tmp_path / "first.log", "w") as log:
        proc = _yard(["sweep", str(path)], env, log)
        deadline = time.time() + 300
        while time.time() < deadline and not _done_candidates(store):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        assert _done_candidates(store), "no trial finished in 300 s"
        # At once, the driver and its Ray together (a lost machine): whether or not Tune's
        # experiment state already records the trial as finished, the resumed sweep must not run it
        # again. The second trial may have started meanwhile: the resumed run starts it again.
        _kill_run(env["YARD_TEST_RUN"])
        proc.wait()
    env.pop("YARD_TEST_RUN")
    finished_before = _done_candidates(store)
    starts_before = _starts(store)
    assert len(finished_before) >= 1 and not [k for k in store.list_keys("sweep/t/") if k.endswith("/_COMPLETE.json")]

    with open(tmp_path / "resume.log", "w") as log:
        proc = _yard(["sweep", str(path), "--resume"], env, log)
        try:
            code = proc.wait(timeout=400)
        except subprocess.TimeoutExpired:  # a hung resume is stopped with its Ray, not left running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = "hung for 400 s"
        assert code == 0, (tmp_path / "resume.log").read_text()[-4000:]
    assert "Tuner.restore" in (tmp_path / "resume.log").read_text()

    starts = _starts(store)
    assert len(starts) == 2
    for cand in finished_before:
        trial = cand.rsplit(".", 1)[-1]
        assert starts[trial] == 1, f"finished trial {trial} was started again: {starts}"
    assert sum(starts.values()) - sum(starts_before.values()) == 2 - len(finished_before)

    (run,) = [r for r in store.runs("sweep", "t") if r.ok]
    rows = store.get_json(f"{run.prefix}/rows.json")
    assert sorted(r["prune_depth"] for r in rows) == [0, 2]
    assert all(r["status"] == "ok" and r["score"] >= 0 for r in rows)
    assert {r["layers"] for r in rows} == {6, 4}
    summary = store.get_json(f"{run.prefix}/summary.json")
    assert summary["teacher_forward_passes"] == 0 and summary["baseline_cached"] is True
    # the resumed run still times every candidate in its timing phase, beside the base
    timing = store.get_json(f"{run.prefix}/timing.json")
    assert set(timing["models"]) == {"__baseline__", *(r["trial_id"] for r in rows)}
    (teacher,) = [r for r in store.runs("teacher", "exaone4-c") if r.ok]
    assert teacher.marker["teacher_forward_passes"] == 8  # the first run: kd_samples texts, once
    assert store.runs("baseline", "exaone4-c")
    assert len(list(csv.DictReader(store.get_bytes(f"{run.prefix}/leaderboard.csv").decode().splitlines()))) == 2
    assert len(store.get_bytes(f"{run.prefix}/pareto.png")) > 1000
    md = store.get_bytes(f"{run.prefix}/leaderboard.md").decode()
    assert all(r["trial_id"] in md for r in rows)
    # the ranking as data, for `yard serve --from-leaderboard`: best Score first
    ranked = store.get_json(f"{run.prefix}/ranked.json")
    assert [r["rank"] for r in ranked] == [1, 2]
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in rows), reverse=True)
    assert sum(k.endswith("/model/config.json") for k in store.list_keys("candidate/")) == 2

    # Tune's experiment (TensorBoard events, progress) lives on S3 beside the store's artifacts
    assert summary["tune_dir"].startswith(f"{uri[len('s3://'):]}/tune/t-")  # a path on pyarrow's S3 filesystem
    tune_keys = store.list_keys("tune/")
    assert any("events.out.tfevents" in k for k in tune_keys) and any(k.endswith("progress.csv") for k in tune_keys)
    assert (zoo_dir / "models.yaml").read_text() == registry_before  # not registered: its models are on S3
