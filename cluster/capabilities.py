"""Where each job and config kind lives.

cluster/ is the ground floor and never imports actors/, tune/ or serve/ at import time: the CLI
and `yard config check` resolve an entry of these tables by module path only when a user asks
for that job or kind, so a capability can be added without cluster/ depending on it.
"""

# job name -> "module:function". The function takes (argv: list[str]) and returns an exit code.
JOBS: dict[str, str] = {
    "zoo": "cluster.models.zoo_cli:main",
    "config": "cluster.cli:config_main",
    "cluster": "cluster.capacity.launch:main",
    "status": "cluster.ops.status:main",
    "cost": "cluster.capacity.cost_cli:main",
    "demo": "cluster.demo:main",
    "chat": "cluster.chat:chat_main",
    "dna": "actors.dna_job:main",
    "sweep": "tune.sweep_cli:main",
    "package": "tune.sweep.package:main",
    "serve": "serve.serve_job:main",
    "judge": "serve.judge.judge:main",
    "probe": "serve.probes.probes:main",
    "persona": "tune.persona.job:main",
    "run": "cluster.experiment.job:main",
}

# One line per job for `yard --help`.
JOB_HELP: dict[str, str] = {
    "zoo": "build or list the toy model zoo (zoo build | zoo list)",
    "config": "validate config files (config check PATH...)",
    "cluster": "write a Ray cluster launcher YAML (AWS) and a KubeRay manifest (cluster config CONFIG)",
    "status": "table of running and recent jobs; STALLED when a heartbeat is late",
    "cost": "GPU-hours, cost, waste and plan vs actual per job and model (cost [JOB...] [--prices FILE])",
    "demo": "the main job: build/reuse the zoo and run every capability's demo on local Ray",
    "chat": "load every registered (or zoo) model on a Ray actor and answer one chat prompt",
    "dna": "LLM-DNA fingerprints on warm Ray hosts, with the playbook's gates (dna CONFIG [--dry-run] | dna import PATH...)",
    "sweep": "compression recipe sweep with Ray Tune: prune x KD x LoRA x quant (sweep CONFIG [--resume])",
    "package": "zip the best candidates of a sweep: package NAME --top N -> submit_<rank>.zip",
    "serve": "serve candidates behind an OpenAI-compatible API on Ray Serve (serve CONFIG [--from-leaderboard S])",
    "judge": "KoMT-style LLM-judge scoring of served candidates (judge CONFIG [k=v ...])",
    "probe": "persona probes against served candidates, with and without the system prompt (probe CONFIG)",
    "persona": "persona fine-tune: prep, SFT then DPO on Ray, merge, lineage, probes (persona CONFIG [--plan])",
    "run": "your own script or function over a grid, watched and resumable (run CONFIG [k=v ...] [--resume] [--plan])",
}

# config `kind:` -> "module:Class" (a cluster.config.YardModel subclass).
CONFIG_KINDS: dict[str, str] = {
    "models": "cluster.models.registry:ModelsFile",
    "zoo": "cluster.models.zoo:ZooConfig",
    "cluster": "cluster.capacity.launch:ClusterConfig",
    "prices": "cluster.capacity.prices:PriceTable",
    "chat": "cluster.chat:ChatJobConfig",
    "dna": "actors.config:DnaConfig",
    "probes": "actors.fingerprint:ProbesFile",
    "sweep": "tune.config:SweepConfig",
    "serve": "serve.config:ServeConfig",
    "judge": "serve.judge.judge:JudgeConfig",
    "probe": "serve.probes.probes:ProbeJobConfig",
    "persona_probes": "serve.probes.probe_suite:ProbeSuite",
    "persona": "tune.persona.config:PersonaConfig",
    "persona_sweep": "tune.persona.sweep:PersonaSweepConfig",
    "experiment": "cluster.experiment.config:ExperimentConfig",
}

# What a job config's `zoo:` runs before its registry is read (`JobConfig.registry_paths`): a
# function taking the loaded zoo config and returning its build (`.registry_path`). Named here, not
# imported by cluster/config.py, since cluster.models.zoo builds on cluster.config.
ZOO_BUILDER = "cluster.models.zoo:build_zoo"

# Demos `yard demo` runs after the foundation's own, in order: name -> "module:function".
# The function takes (store, zoo_registry_path, quick: bool) and returns a dict with at least
# "status" ("ok"/"failed") and "report" (a path or URI).
DEMOS: dict[str, str] = {
    "run": "cluster.experiment.job:demo",
    "dna": "actors.dna_job:demo",
    "sweep": "tune.sweep.sweep:demo",
    "serve": "serve.demo:demo",
    "persona": "tune.persona.job:demo",
}
