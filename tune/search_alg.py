"""Search algorithms for modelyard's Tune sweeps (`yard sweep`, `yard persona-sweep`): the
concurrency limit inside the search algorithm, and a resumed sweep's release of trials a restored
state still counts as running."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def search_algorithm(cfg):
    """The search algorithm of a sweep config (`cfg.search`: algorithm, max_concurrent_trials, seed),
    its concurrency limit inside it: Tune ignored `max_concurrent_trials` beside a
    BasicVariantGenerator of our own (random search ran every trial at once), and the object is
    ours to reach on `--resume` (`release_finished`)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    limit = cfg.search.max_concurrent_trials
    if cfg.search.algorithm == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(metric="score", mode="max",
                                               sampler=optuna.samplers.TPESampler(seed=cfg.search.seed)), limit)
    if cfg.search.algorithm == "random":
        return BasicVariantGenerator(random_state=cfg.search.seed, max_concurrent=limit)
    return BasicVariantGenerator(max_concurrent=limit)


def _live_ids(search_alg) -> set | None:
    """The trial ids a search algorithm counts against its concurrency limit (None: not one of ours)."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if isinstance(search_alg, BasicVariantGenerator):
        return search_alg._live_trials
    if isinstance(search_alg, ConcurrencyLimiter):
        return search_alg.live_trials
    return None


class release_finished:
    """A Tune callback for a resumed sweep: at its first step, the trials the restored experiment
    holds as finished stop counting against the search algorithm's concurrency limit.

    Tune restores the experiment's trials and the search algorithm's state from two files. A run
    killed between their uploads left a finished trial still "live" in the search algorithm's state:
    with one trial at a time, the resumed sweep then waited for the next trial forever (Tune's
    "Blocking for next trial", seen once in `test_sweep_killed_and_resumed...`: 0 of 2 trials, no
    trial running, for 20 minutes). Only at the first step: later, Tune tells the search algorithm
    itself, and a ConcurrencyLimiter forwards a trial's result to its searcher only while it still
    counts it as live."""

    def __new__(cls, search_alg):
        from ray import tune
        from ray.tune.experiment import Trial
        from ray.tune.search import ConcurrencyLimiter

        class Callback(tune.Callback):
            done = False

            def on_step_begin(self, iteration, trials, **info):
                if self.done:
                    return
                self.done = True
                live = _live_ids(search_alg)
                stale = {t.trial_id for t in trials if t.status in (Trial.TERMINATED, Trial.ERROR)} & (live or set())
                if not stale:
                    return
                live -= stale
                if isinstance(search_alg, ConcurrencyLimiter):
                    search_alg.num_unfinished_live_trials = max(0, search_alg.num_unfinished_live_trials - len(stale))
                log.info("resume: %d finished trial(s) no longer counted as running by the search algorithm: %s",
                         len(stale), ", ".join(sorted(stale)))

        return Callback()
