"""The timing phase on a real sweep, on a quiet machine: the suite runs this module last, and its
timing phase with the machine to itself (`quiet` marker and `machine_alone`, tests/conftest.py),
as a user's timing phase runs with nothing else of the sweep beside it."""
import pytest

from cluster.store.storage_local import LocalStore
from tests.tune.sweep.test_sweep import DEMO, _cfg


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

    monkeypatch.setattr(sweep, "time_candidates", alone)

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
    assert code == 0 and summary["ok"] == 2
    store = LocalStore(str(tmp_path / "store"))
    run = store.runs("sweep", "ident")[-1]
    rows = store.get_json(f"{run.prefix}/rows.json")
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
