"""Users' own experiments on the cluster: `yard run` takes an unchanged script (or a function) and
a grid of conditions and runs it as a watched, resumable Ray job.

Modules: `config` (kind: experiment), `grid` (conditions, ids, argv, run keys), `fit` (which node a
condition fits, before anything runs), `output` (a script's output read as heartbeat, progress,
phase and result; a bounded log), `condition` (one attempt on its worker), `results` (the table),
`job` (the driver, `yard run`, and `run_experiment` for notebooks).

It may import the ground floor's job machinery (cluster.config, storage, progress, watch, jobs,
ledger, prices, attempts, runtime) and nothing above cluster/.

    from cluster.experiment import run_experiment
    rows = run_experiment("configs/experiment.demo.yaml")
"""
from cluster.experiment.job import run_experiment

__all__ = ["run_experiment"]
