"""`yard sweep --resume` after a kill between Tune's two state uploads: a trial the restored experiment
holds as finished, still "live" in the restored search algorithm's state, must not hold the sweep's one
trial slot forever (`release_finished`, tune/search_alg.py). No Ray: the search algorithms are driven
directly (the end-to-end resume: test_sweep.py). Last, on a local Ray: whether Tune runs the next trial in
a finished trial's process (`resources.reuse_trial_process`)."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from tune.search_alg import release_finished, search_algorithm


def _cfg(algorithm: str, limit: int = 1):
    return SimpleNamespace(search=SimpleNamespace(algorithm=algorithm, max_concurrent_trials=limit, seed=0))


def _grid(alg):
    from ray import tune
    from ray.tune.experiment import Experiment

    def trainable(config):
        return {"score": 1.0}

    alg.add_configurations([Experiment("e", trainable, config={"prune_depth": tune.grid_search([0, 2])})])
    return alg


@pytest.mark.parametrize("algorithm", ["grid", "random"])
def test_a_finished_trial_left_live_in_the_restored_state_is_released_at_the_first_step(algorithm):
    from ray.tune.experiment import Trial

    running = _grid(search_algorithm(_cfg(algorithm)))
    first = running.next_trial()
    assert first is not None and running.next_trial() is None  # one trial at a time
    saved = running.get_state()          # the search algorithm's state, uploaded while `first` ran
    first.set_status(Trial.TERMINATED)   # the experiment's state, uploaded after it finished

    restored = _grid(search_algorithm(_cfg(algorithm)))
    restored.set_state(saved)
    assert restored.next_trial() is None  # Tune's "Blocking for next trial", for ever
    callback = release_finished(restored)
    callback.on_step_begin(0, [first])
    second = restored.next_trial()
    assert second is not None and second.config["prune_depth"] != first.config["prune_depth"]
    assert restored.next_trial() is None  # the limit holds again: `second` is running
    # only at the first step: later completions are Tune's to report, in their order
    second.set_status(Trial.TERMINATED)
    callback.on_step_begin(1, [first, second])
    assert restored.next_trial() is None


def test_random_search_honours_the_concurrency_limit_and_optuna_is_limited_too():
    """Tune ignored `max_concurrent_trials` beside a BasicVariantGenerator of our own (random search
    ran every trial at once); the limit now lives in the search algorithm, whichever it is."""
    from ray.tune.experiment import Trial
    from ray.tune.search import ConcurrencyLimiter

    alg = _grid(search_algorithm(_cfg("random", limit=2)))
    assert alg.next_trial() is not None and alg.next_trial() is not None and alg.next_trial() is None

    limited = search_algorithm(_cfg("optuna"))
    assert isinstance(limited, ConcurrencyLimiter) and limited.max_concurrent == 1
    limited.live_trials.add("t1")        # a trial the restored state still counts
    limited.num_unfinished_live_trials = 1
    finished = SimpleNamespace(trial_id="t1", status=Trial.TERMINATED)
    release_finished(limited).on_step_begin(0, [finished])
    assert limited.live_trials == set() and limited.num_unfinished_live_trials == 0


def _pid_trainable(config):
    import os

    from ray import tune

    tune.report({"pid": os.getpid()})


@pytest.mark.parametrize("reuse, processes", [(True, 1), (False, 2)])
def test_resources_reuse_trial_process_decides_whether_two_trials_share_a_process(ray_local, tmp_path, reuse, processes):
    # Tune's reuse_actors, as the sweep's tuner sets it, on a local Ray: two trials one after the other
    # (the sweep's own trainable would time seconds of training; this one reports its process id)
    from cluster.config import load_config
    from tune.config import SweepConfig
    from tune.sweep.sweep import _tuner

    demo = Path(__file__).resolve().parents[3] / "configs" / "sweep.demo.yaml"
    cfg = load_config(demo, SweepConfig, ["zoo=null", "registry=[]", f"storage.uri={tmp_path}", "search.num_samples=2",
                                          "search.max_concurrent_trials=1", "search.asha.enabled=false",
                                          f"resources.reuse_trial_process={str(reuse).lower()}",
                                          *[f"search.space.{k}={{value: {v}}}" for k, v in
                                            (("prune_depth", 0), ("quant", "none"), ("kd_samples", 0), ("lora_rank", 0))]])
    progress = SimpleNamespace(heartbeat=lambda **kw: None, advance=lambda **kw: None)
    results = _tuner(cfg, _pid_trainable, str(tmp_path / "tune"), None, "pids", progress).fit()
    assert len(results) == 2 and not results.errors
    assert len({r.metrics["pid"] for r in results}) == processes
