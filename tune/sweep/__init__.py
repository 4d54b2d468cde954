"""The compression sweep (`yard sweep` on a `kind: sweep` config): the Ray Tune run (sweep.py),
one trial (trial.py), its plan and cost (sweep_cost.py), the hung-trial watchdog (watchdog.py), the
timing phase (timing.py, timing_phase.py) and what it publishes (leaderboard.py, publish.py,
`yard package`: package.py).

May import cluster/, actors/, tune's top-level modules, tune.compress and tune.eval."""
