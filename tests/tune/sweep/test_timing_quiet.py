"""The timing phase on a real sweep, on a quiet machine: the suite runs this module last, and its
timing phase with the machine to itself (`quiet` marker and `machine_alone`, tests/conftest.py),
as a user's timing phase runs with nothing else of the sweep beside it."""
import os

import pytest

from cluster.store.storage_local import LocalStore
from tests.tune.sweep.test_sweep import DEMO, _cfg
from tune.sweep.timing import BASELINE


def _visit(cfg_dict, registry_paths, store_uri, endpoint_url, benchmarks, name, prefix):
    """A stand-in for `time_one_vllm` (vLLM needs a CUDA GPU; the real one runs in
    tests/bench/device/gpu-round.sh identity): its signature, and the process it ran in."""
    return (0.01 if name == BASELINE else 0.02), 100, f"pid {os.getpid()}"


def test_every_vllm_timing_visit_is_a_process_of_its_own(ray_local, zoo, tmp_path):
    # the Ray task the vLLM timing phase runs, through real Ray: a worker serves one visit and exits
    from tune.sweep.timing_phase import _time_vllm

    qa = f"eval.benchmarks=[{{name: qa, task: qa, source: {DEMO.parents[1] / 'configs/bench/zoo_qa.jsonl'}}}]"
    cfg = _cfg(zoo, tmp_path, qa, "eval.engine=vllm", "timing={rounds: 2, prompts: 3, new_tokens: 5}")
    timing = _time_vllm(cfg, [str(zoo.registry_path)], LocalStore(str(tmp_path)), [], {"a": "p/a"}, None, 0,
                        visit=_visit)
    assert len(set(timing["device"].removesuffix(" (vLLM)").split(" + "))) == 4  # 2 rounds x (base, a)
    assert timing["models"]["a"]["speed_norm_runs"] == pytest.approx([-1.0, -1.0])


@pytest.mark.quiet
@pytest.mark.timeout(500)
def test_identity_recipe_scores_half_while_trials_share_the_node(ray_local, zoo, tmp_path, machine_alone,
                                                                 monkeypatch):
    """Two copies of the base (prune 0, no KD, no heal, no quantization) made 2 at a time on 2
    cores. Timed inside the trials such a copy scored 0.40 or less (the baseline was timed alone in
    the prepare step); the timing phase times base and copies alone, interleaved, so a copy scores
    0.5 within the noise the phase itself measures. `quiet`: no other test runs meanwhile (CI's
    other worker beside it moved such a copy's Score to 0.47-0.55).

    The bound, 0.05 or twice the measured spread, catches the contention bias this phase removed
    (0.1 and more: 0.40 in the demo sweep, 0.66 for one trial here). The phase's precision on a
    quiet machine (0.50 +- 0.02, the issue's goal) is a benchmark figure (tests/bench/
    bench_sweep_timing.py, BENCHMARKS.md), not asserted: a shared VM's speed is not the project's
    to control. A CI run measured 0.543 here with a spread of 0.011, every round alike: both
    models' weights were pages of their safetensors files (each a different file), and the
    phase now copies every model's weights into fresh memory of its own first (`_own_memory`)."""
    from tune.sweep import sweep
    from tune.sweep.sweep import run_sweep

    # the timing phase, and only it, with the machine to itself: the trials share it like any test
    time_candidates = sweep.time_candidates

    def alone(*args, **kwargs):
        with machine_alone():
            return time_candidates(*args, **kwargs)

    def fails(*args, **kwargs):  # as the GPU run's did (Ray refused an option): nothing of the trials is lost
        raise ValueError("Setting 'max_calls' is not supported in '.options()'.")

    monkeypatch.setattr(sweep, "time_candidates", fails)

    # three timing rounds (a spread needs two or more): the phase runs with every other worker
    # paused, at the end of the suite, so each round is wall time nothing else uses (5 rounds: 14 s)
    benches = [f"eval.benchmarks.{i}.limit=6" for i in range(2)]
    cfg = _cfg(zoo, tmp_path, "name=ident", "register_top=0", "calibration.count=8", "calibration.holdout=2",
               "search.space.prune_depth={value: 0}", "search.space.kd_samples={value: 0}",
               "search.space.lora_rank={value: 0}", "search.space.quant={value: none}", "search.num_samples=2",
               "search.max_concurrent_trials=2", "search.asha.enabled=false", "eval.max_new_tokens=16",
               "timing.rounds=3", "timing.prompts=8", "timing.new_tokens=24", "quant.num_calibration_samples=2",
               *benches)
    code, summary = run_sweep(cfg, config_path=str(DEMO))
    store = LocalStore(str(tmp_path / "store"))
    run = store.runs("sweep", "ident")[-1]
    first = store.get_json(f"{run.prefix}/rows.json")
    # published with the trials' own speed, said so, the run left resumable
    assert code == 1 and summary["ok"] == 2 and "max_calls" in summary["timing_failed"]
    assert all(r["status"] == "ok" and r["score"] is not None and "score_in_trial" not in r for r in first)
    assert "## The timing phase failed" in (tmp_path / "store" / run.prefix / "leaderboard.md").read_text()

    # --resume: every trial kept (none run again), only the timing phase runs
    monkeypatch.setattr(sweep, "time_candidates", alone)
    code, summary = run_sweep(cfg, config_path=str(DEMO), resume=True)
    assert code == 0 and summary["ok"] == 2 and summary["timing_failed"] is None
    assert store.runs("sweep", "ident")[-1].name == run.name
    rows = store.get_json(f"{run.prefix}/rows.json")
    assert sorted((r["trial_id"], r["wall_s"]) for r in rows) == sorted((r["trial_id"], r["wall_s"]) for r in first)
    assert summary["trials_per_hour"] is None  # no trial ran in this job
    timing = store.get_json(f"{run.prefix}/timing.json")
    for row in rows:
        assert row["perf_norm"] == pytest.approx(1.0, abs=0.02)  # the same weights answer the same
        assert row["score_in_trial"] is not None  # the trial's own figure is kept beside it
        # every model generated the same tokens in every round: each prompt x 24 tokens (the 6 QA
        # items; the MCQ benchmark scores log-likelihoods and generates nothing)
        assert timing["prompts"] == 6
        assert timing["models"][row["trial_id"]]["generated_tokens"] == 6 * 24
        assert len(timing["models"][row["trial_id"]]["speed_norm_runs"]) == 3
        assert abs(row["score"] - 0.5) <= max(0.05, 2 * row["score_spread"]), rows
    assert timing["models"]["__baseline__"]["generated_tokens"] == 6 * 24
    assert summary["timing"]["rounds"] == 3
    md = (tmp_path / "store" / run.prefix / "leaderboard.md").read_text()
    assert "| ± |" in md
