"""`yard sweep CONFIG`: a compression recipe search with Ray Tune, ranked the way the users rank lanes.

    yard sweep configs/sweep.demo.yaml                  # validate, prepare once, run the trials, publish
    yard sweep configs/sweep.demo.yaml --resume         # continue the newest unfinished run (Tuner.restore)
    yard package demo --top 3                           # submit_<rank>.zip (tune/sweep/package.py)

Order of work: every input is checked before Ray Tune starts (prune depth against the base's
layers, quantization schemes against the cluster's GPUs, the calibration set, every benchmark
file). A prepare task then computes, once per base, what all trials share: the Block Influence
scores, the teacher's top-k logits over the largest `kd_samples`, and the baseline evaluation
(each cached in the store, so a resumed or repeated sweep pays nothing). The trials follow
(`tune.sweep.trial.run_trial`), then the leaderboard, plots and candidates are published as a store run
of kind "sweep" and the candidates join the zoo's lineage.

Tune's own files (TensorBoard events, progress.csv per trial, the experiment state that
`--resume` restores) live under `<store>/tune/<name>-<run>/`: `tensorboard --logdir` that folder.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.config import ConfigError, job_config, job_parser, load_config, naming_source
from cluster.engines.engine import check_engine
from cluster.joblog import tune_verbosity
from cluster.models.registry import ModelRegistry
from cluster.ops.jobs import REPO_ROOT, run_job
from cluster.store.storage import ArtifactStore, new_run_name, open_store
from tune.config import SweepConfig
from tune.search_alg import release_finished, search_algorithm
from tune.sweep.publish import print_rows, publish, register_candidates
from tune.sweep.sweep_cost import print_plan, record_sweep, sweep_plan
from tune.sweep.timing import apply_timing, timing_summary
from tune.sweep.timing_phase import time_candidates
from tune.sweep.watchdog import killed_reasons, trial_watchdog
from tune.tune_storage import tune_storage

log = logging.getLogger(__name__)
DEMO_CONFIG = REPO_ROOT / "configs" / "sweep.demo.yaml"


@dataclass
class Validated:
    """A sweep's inputs, all checked: what the prepare step and the trials get."""

    registry_paths: list[str]
    items: list  # calibration items (unrendered)
    benchmarks: list
    layers: int
    cuda_capabilities: tuple[float, ...]


def _base_layers(registry: ModelRegistry, base: str) -> int:
    from transformers import AutoConfig

    from cluster.models.loading import decide_load, resolve_source
    from cluster.node import node_facts

    spec = registry.get(base)
    plan = decide_load(base, spec, node_facts())
    config = AutoConfig.from_pretrained(resolve_source(plan), revision=plan.revision,
                                        trust_remote_code=plan.trust_remote_code)
    return int(getattr(config, "num_hidden_layers"))


def _trial_capabilities(gpus_per_trial: float) -> tuple[float, ...]:
    """CUDA capabilities where a trial would run: () for CPU trials; for GPU trials, those of a
    node Ray places a probe task with the trial's GPU request on."""
    if gpus_per_trial == 0:
        return ()
    import ray

    from cluster.node import node_facts

    probe = ray.remote(num_gpus=min(gpus_per_trial, 1.0), num_cpus=0)(lambda: node_facts().cuda_capabilities)
    ready, _ = ray.wait([ref := probe.remote()], timeout=120)
    if not ready:
        ray.cancel(ref, force=True)
        raise ConfigError(f"resources.gpus_per_trial: {gpus_per_trial}: no node with a free GPU answered in 120 s")
    return tuple(ray.get(ref))


def validate(cfg: SweepConfig, config_path: str | None, registry_paths: list[str]) -> Validated:
    """Every check that can fail before a trial starts; ConfigError/UserError with one line that
    starts with the config file. Ray is needed only for GPU trials (their CUDA capabilities)."""
    with naming_source(config_path or "sweep config"):
        return _validate(cfg, config_path, registry_paths)


def _validate(cfg: SweepConfig, config_path: str | None, registry_paths: list[str]) -> Validated:
    from tune.compress.calibration import load_items
    from tune.compress.quantize import scheme_problem
    from tune.eval.evaluate import load_benchmarks

    registry = ModelRegistry.load(registry_paths)
    registry.check_ids([cfg.base], config_path or "sweep config", "base")
    layers = _base_layers(registry, cfg.base)
    depth = cfg.search.space.prune_depth.upper()
    if depth >= layers:
        raise ConfigError(f"search.space.prune_depth: {depth} >= {layers}, the decoder layers of {cfg.base} "
                          f"(at most {layers - 1})")
    gpus = cfg.resources.gpus_per_trial
    if cfg.eval.engine.name == "vllm":
        if gpus < 1 or gpus != int(gpus):
            raise ConfigError(f"resources.gpus_per_trial: {gpus:g}: eval.engine vllm evaluates on whole GPUs (vLLM "
                              f"sizes its cache to a share of the device; 1 or more)")
        tp = registry.get(cfg.base).num_gpus
        if gpus < tp:  # each candidate runs in vLLM as its base does: tensor parallel over the base's num_gpus
            raise ConfigError(f"resources.gpus_per_trial: {gpus:g}: eval.engine vllm runs each candidate as its base "
                              f"{cfg.base} runs, on num_gpus {tp} ({registry.sources.get(cfg.base, 'the registry')}): "
                              f"at least {tp}")
    if cfg.quant.python and shutil.which(cfg.quant.python) is None:
        raise ConfigError(f"quant.python: {cfg.quant.python}: no such executable")
    caps = _trial_capabilities(gpus)
    for scheme in cfg.search.space.quant.values():
        problem = scheme_problem(scheme, caps)
        if problem:
            raise ConfigError(f"search.space.quant: {problem}")
    items = load_items(cfg.calibration, config_path)
    base_dir = Path(config_path).resolve().parent if config_path else None
    benchmarks = load_benchmarks(cfg.eval, base_dir)
    return Validated(registry_paths, items, benchmarks, layers, caps)


def prepare(cfg_dict: dict, registry_paths: list[str], store_uri: str, endpoint_url: str | None, items: list,
            benchmarks: list) -> dict:
    """Once per sweep, on a trial-sized slot: the rendered calibration texts, BI scores, teacher
    top-k logits and the baseline, each computed at most once per base (store caches)."""
    import torch

    from cluster.models.content import model_content_key
    from cluster.models.loading import load_model
    from tune.compress.calibration import render, split
    from tune.compress.distill import teacher_logits_cached
    from tune.compress.prune import bi_scores_cached
    from tune.eval.baseline import baseline_cached, hardware_key

    cfg = SweepConfig.model_validate(cfg_dict)
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_trial)))  # the baseline is timed like a trial
    store = open_store(store_uri, endpoint_url)
    registry = ModelRegistry.load(registry_paths)
    spec = registry.get(cfg.base)
    model, tokenizer, plan = load_model(cfg.base, registry)
    # every cache is keyed by what the base is (its files), not its id: a rebuilt base is a miss
    content = model_content_key(spec, plan)
    calibration, holdout = split(render(items, tokenizer), cfg.calibration)
    bi = bi_scores_cached(store, cfg.base, model, tokenizer, calibration, variant=cfg.prune.variant, content=content)
    n_teacher = int(cfg.search.space.kd_samples.upper())
    teacher_passes = 0
    if n_teacher:
        cache = teacher_logits_cached(store, cfg.base, model, tokenizer, calibration[:n_teacher],
                                      top_k=cfg.kd.top_k, max_length=cfg.calibration.max_length, content=content)
        teacher_passes = cache.teacher_forward_passes
    device = next(model.parameters()).device
    size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    layers = int(model.config.num_hidden_layers)
    hardware = hardware_key(device)
    opened = []
    if cfg.eval.engine.name == "vllm":
        from cluster.engines.engine import engine_version

        hardware["engine"] = engine_version("vllm")  # a baseline from another vLLM is another baseline

        def load():  # only on a cache miss: the HF copy makes room for vLLM's
            nonlocal model
            from cluster.engines.engine_vllm import load_vllm
            from cluster.models.loading import release_memory

            model = None
            release_memory()
            opened.append(load_vllm(cfg.base, registry, cfg.eval.engine.vllm)[0])
            return opened[-1], tokenizer
    else:
        def load():
            return model, tokenizer
    try:
        baseline, was_cached = baseline_cached(store, cfg.base, load, benchmarks, cfg.eval, spec=spec,
                                               hardware=hardware, content=content)
    finally:
        for engine in opened:
            engine.close()
    return {"calibration": calibration, "holdout": holdout, "bi_scores": bi, "teacher_forward_passes": teacher_passes,
            "teacher_key": {"texts": n_teacher, "top_k": cfg.kd.top_k, "max_length": cfg.calibration.max_length,
                            "content": content},
            "baseline": baseline.to_dict(), "baseline_cached": was_cached, "base_size_mb": round(size_mb, 3),
            "layers": layers}


def _state_key(name: str, run: str) -> str:
    return f"sweeps/{name}/{run}.json"


def unfinished_run(store: ArtifactStore, name: str) -> dict:
    """The newest sweep run of `name` that did not publish; ConfigError when there is none."""
    runs = sorted(k for k in store.list_state(f"sweeps/{name}/") if k.endswith(".json"))
    for key in reversed(runs):
        state = store.get_state(key)
        if state.get("status") != "published":
            return state
    raise ConfigError(f"--resume: sweep {name!r} has no unfinished run in {store.uri} (start one without --resume)")


_TRIAL_ID = re.compile(r"_([0-9a-f]{5}_\d{5})")


def rows_from_results(grid, asha: bool = True) -> list[dict]:
    """One leaderboard row per trial: ok (evaluated; scored unless the base's perf is 0), stopped
    (by ASHA, or `asha` False: ended unfinished, the sweep interrupted) or error (one line)."""
    rows = []
    for result in grid:
        metrics, config = dict(result.metrics or {}), dict(result.config or {})
        match = _TRIAL_ID.search(Path(str(result.path)).name)
        trial_id = metrics.get("trial_id") or (match.group(1) if match else Path(str(result.path)).name)
        row = {k: config.get(k) for k in ("prune_depth", "kd_samples", "lora_rank", "quant", "ffn_keep_ratio")}
        row["trial_id"] = trial_id
        for key in ("layers", "perf", "sec_per_token", "perf_norm", "speed_norm", "score", "size_mb", "kd_loss",
                    "val_loss", "candidate", "seconds"):
            row[key] = metrics.get(key)
        row.update({k: v for k, v in metrics.items() if k.startswith("perf.")}, wall_s=metrics.get("time_total_s"))
        if result.error is not None:
            row["status"], row["error"] = "error", str(result.error).strip().splitlines()[-1][:300]
        elif metrics.get("score") is not None or metrics.get("stage") == "evaluate":
            row["status"], row["error"] = "ok", None
        else:
            row["status"] = "stopped"
            val = metrics.get("val_loss")
            stage = metrics.get("stage", "?")
            row["error"] = ((f"stopped early by ASHA after stage {stage}" if asha else
                             f"unfinished after stage {stage} (the sweep was interrupted; --resume finishes it)")
                            + (f" (val_loss {val:.4f})" if isinstance(val, (int, float)) else ""))
        rows.append(row)
    return rows




class _Progress:
    """A Tune callback feeding `yard status` (rate and ETA over finished trials)."""

    def __new__(cls, reporter):
        from ray import tune

        class Callback(tune.Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                reporter.heartbeat(trial=trial.trial_id, stage=result.get("stage"))

            def on_trial_complete(self, iteration, trials, trial, **info):
                reporter.advance(item=trial.trial_id)

            def on_trial_error(self, iteration, trials, trial, **info):
                reporter.advance(item=f"{trial.trial_id} (error)")

        return Callback()


def _tuner(cfg: SweepConfig, trainable, storage_path: str, filesystem, experiment: str, reporter,
           callbacks: list | None = None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    search_alg = search_algorithm(cfg)
    scheduler = None
    if cfg.search.asha.enabled:
        # ASHA compares trials on the validation loss each stage reports; Optuna ranks on the final score.
        scheduler = ASHAScheduler(time_attr="training_iteration", metric="val_loss", mode="min", max_t=4,
                                  grace_period=cfg.search.asha.grace_period,
                                  reduction_factor=cfg.search.asha.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=cfg.search.space.to_tune(),
        # max_concurrent_trials: inside search_alg (search_algorithm)
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=cfg.search.num_samples,
                                    reuse_actors=cfg.resources.reuse_trial_process),
        run_config=tune.RunConfig(name=experiment, storage_path=storage_path, storage_filesystem=filesystem,
                                  callbacks=[_Progress(reporter), *(callbacks or [])], failure_config=tune.FailureConfig(max_failures=0),
                                  # Tune's per-trial tables: the job log's (our live view shows trials)
                                  verbose=tune_verbosity()),
    )


def run_sweep(cfg: SweepConfig, *, config_path: str | None = None, resume: bool = False,
              restart_errored: bool = False, trial_fn=None) -> tuple[int, dict]:
    """The whole job. Exit code 0 when at least one trial produced a scored candidate and nothing
    errored, 1 otherwise (every finished trial is still published). `trial_fn`: the trainable
    (default `tune.sweep.trial.run_trial`; tests pass one that hangs)."""
    import ray
    from ray import tune

    from cluster.capacity.prices import job_prices
    from cluster.ops.progress import ProgressReporter
    from cluster.runtime import connect
    from tune.sweep.trial import TrialSetup, run_trial

    # A killed driver loses at most this much of Tune's trial bookkeeping (the state is tiny).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    check_engine(cfg.eval.engine, "eval.engine", source=config_path or "sweep config")
    store = open_store(cfg.storage.uri, cfg.storage.endpoint_url)
    prices = job_prices(cfg)  # a bad price table: one line, before Ray
    # absolute: Tune runs each trial in its own working directory
    registry_paths = [str(Path(p).resolve()) for p in cfg.registry_paths()]
    if cfg.resources.gpus_per_trial == 0:  # every check reads files and the registry: before Ray
        checked = validate(cfg, config_path, registry_paths)
        connect(cfg.ray)
    else:  # the quantization schemes are checked against the GPUs a trial would get
        connect(cfg.ray)
        checked = validate(cfg, config_path, registry_paths)
    state = unfinished_run(store, cfg.name) if resume else None
    run = state["run"] if state else new_run_name()
    storage_path, filesystem = tune_storage(store, cfg.storage.endpoint_url)
    experiment = f"{cfg.name}-{run}"
    with run_job("sweep", cfg, store, config_path=config_path, stall_after_s=cfg.stall_after_s) as job:
        t0 = time.time()
        reporter = ProgressReporter(store, job.job_id, task="sweep", total=cfg.search.trial_count())
        reporter.phase("prepare", item=cfg.base)
        res = {"num_cpus": cfg.resources.cpus_per_trial, "num_gpus": cfg.resources.gpus_per_trial}
        prep = ray.get(ray.remote(prepare).options(**res).remote(
            cfg.model_dump(), registry_paths, store.uri, cfg.storage.endpoint_url, checked.items, checked.benchmarks))
        log.info("prepare: %d teacher forward passes, baseline %s", prep["teacher_forward_passes"],
                 "from the store" if prep["baseline_cached"] else "measured")
        store.put_state(_state_key(cfg.name, run), {"run": run, "experiment": experiment, "status": "running",
                                                     "tune_path": f"{storage_path}/{experiment}", "job_id": job.job_id})
        setup = TrialSetup(sweep=cfg.model_dump(), sweep_name=cfg.name, sweep_run=run, registry_paths=registry_paths,
                           store_uri=store.uri, endpoint_url=cfg.storage.endpoint_url, job_id=job.job_id,
                           calibration=prep["calibration"], holdout=prep["holdout"], bi_scores=prep["bi_scores"],
                           teacher_key=prep["teacher_key"], baseline=prep["baseline"], benchmarks=checked.benchmarks,
                           cuda_capabilities=checked.cuda_capabilities)
        trainable = tune.with_resources(tune.with_parameters(trial_fn or run_trial, setup=setup),
                                        {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial})
        reporter.phase("trials")
        path = f"{storage_path}/{experiment}"
        incidents: list[dict] = []
        watchdog = trial_watchdog(store, job.job_id, cfg, incidents)
        if state and tune.Tuner.can_restore(path, storage_filesystem=filesystem):
            log.info("resuming %s with Tuner.restore: finished trials are kept, unfinished ones rerun", path,
                     extra={"console": True})
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=restart_errored, storage_filesystem=filesystem)
            # the pickled callbacks report to the interrupted job: this job's replace them
            tuner._local_tuner.get_run_config().callbacks = [
                _Progress(reporter), watchdog, release_finished(tuner._local_tuner._tune_config.search_alg)]
        else:
            tuner = _tuner(cfg, trainable, storage_path, filesystem, experiment, reporter, [watchdog])
        t_trials, job.plan = time.time(), sweep_plan(cfg, store)
        grid = tuner.fit()
        trial_seconds = time.time() - t_trials
        rows = killed_reasons(rows_from_results(grid, asha=cfg.search.asha.enabled), incidents)
        baseline = _baseline_row(cfg, prep)
        timing, timing_failed = None, None
        # a resume after a failed timing phase: every trial finished in (and is on the ledger of) that job
        trials_recorded = bool(state) and state.get("status") == "timing_failed"
        candidates = {r["trial_id"]: r["candidate"] for r in rows if r["status"] == "ok" and r.get("candidate")}
        if cfg.timing.enabled and candidates:
            reporter.phase("timing")
            try:
                timing = time_candidates(cfg, registry_paths, store, checked.benchmarks, candidates, job.job_id)
            except Exception as e:  # the trials' results stay: published below, and --resume times them again
                timing_failed = f"{type(e).__name__}: {e}".splitlines()[0]
                log.error("timing phase failed: %s; the leaderboard ranks each trial's own speed", timing_failed,
                          exc_info=True)
            else:
                rows = apply_timing(rows, baseline, timing)
            summary_timing_s = time.time() - t_trials - trial_seconds
        seconds = time.time() - t0
        ok = [r for r in rows if r["status"] == "ok"]
        scored = [r for r in ok if r.get("score") is not None]  # none when the base's perf is 0
        summary = {"sweep": cfg.name, "run": run, "base": cfg.base, "trials": len(rows), "ok": len(ok),
                   "scored": len(scored),
                   "stopped": sum(r["status"] == "stopped" for r in rows),
                   "errors": sum(r["status"] == "error" for r in rows),
                   "teacher_forward_passes": prep["teacher_forward_passes"],
                   "baseline_cached": prep["baseline_cached"], "seconds": round(seconds, 1),
                   "trial_seconds": round(trial_seconds, 1),
                   # over the trial phase: the prepare step (teacher, baseline) is paid once per sweep
                   "trials_per_hour": round(len(rows) / trial_seconds * 3600, 1)
                   if trial_seconds > 0 and not trials_recorded else None,
                   "incidents": incidents, "tune_dir": path,
                   "best": max(scored, key=lambda r: r["score"])["trial_id"] if scored else None,
                   "timing": timing_summary(timing), "timing_failed": timing_failed}
        reporter.phase("publish")
        summary["cost_md"] = record_sweep(job, rows, cfg, prices, prepare_s=t_trials - t0, incidents=incidents,
                                          timing_s=summary_timing_s if candidates and cfg.timing.enabled else 0.0,
                                          timing_failed=timing_failed,
                                          trials_recorded=trials_recorded)
        prefix = publish(store, cfg, run, rows, baseline, summary, timing)
        summary["report"] = store.locate(f"{prefix}/leaderboard.md")
        summary["registered"] = register_candidates(store, rows, cfg, registry_paths)
        # a failed timing phase leaves the run resumable: --resume keeps every trial and times them again
        store.put_state(_state_key(cfg.name, run), {"run": run, "experiment": experiment,
                                                     "status": "timing_failed" if timing_failed else "published",
                                                     "tune_path": path, "job_id": job.job_id, "prefix": prefix})
        job.add_artifact(prefix)
        job.summary = summary
        print_rows(rows, summary)
        bad = [r for r in rows if r["status"] == "error"]
        code = 0 if ok and not bad and not timing_failed else 1
        if timing_failed:
            job.fail(f"timing phase failed ({timing_failed}); {len(ok)} trial(s) kept and published with their own "
                     f"speed; `yard sweep {config_path or 'CONFIG'} --resume` times them again without rerunning them")
        elif code:
            job.fail(f"{len(bad)} trial(s) errored, {len(ok)} scored")
        reporter.finish("succeeded" if code == 0 else "failed")
    return code, {"status": "ok" if code == 0 else "failed", **summary}


def _baseline_row(cfg: SweepConfig, prep: dict) -> dict:
    base = prep["baseline"]
    return {"model_id": cfg.base, "perf": base["perf_mean"], **{f"perf.{k}": v for k, v in base["perf"].items()},
            "sec_per_token": base["sec_per_token"], "size_mb": prep["base_size_mb"], "layers": prep["layers"]}


def build_parser() -> argparse.ArgumentParser:
    """The compression sweep's command line (`yard sweep`, with tune/sweep_cli.py choosing the kind)."""
    parser = job_parser("yard sweep", "compression recipe sweep with Ray Tune", DEMO_CONFIG)
    parser.add_argument("--resume", action="store_true", help="continue the newest unfinished run of this sweep")
    parser.add_argument("--restart-errored", action="store_true", help="with --resume: rerun errored trials")
    parser.add_argument("--plan", "--dry-run", dest="plan", action="store_true", help="print trials, time and cost; run nothing")
    return parser


def main(argv: list[str]) -> int:
    """`yard sweep CONFIG` for a kind: sweep config."""
    args = build_parser().parse_intermixed_args(argv)
    cfg = job_config(args, SweepConfig)
    if args.plan:
        return print_plan(cfg)
    code, _ = run_sweep(cfg, config_path=args.config, resume=args.resume, restart_errored=args.restart_errored)
    return code


def demo(store, zoo_registry: str, quick: bool = True) -> dict:
    """`yard demo`'s sweep step: the demo sweep on the zoo `yard demo` built (shorter when quick)."""
    overrides = ["zoo=null", f"registry=[{zoo_registry}]", f"storage.uri={store.uri}"]
    if quick:
        overrides += ["name=demo-quick", "search.space.prune_depth={grid: [0, 2]}",
                      "search.space.kd_samples={value: 16}", "search.space.lora_rank={value: 0}",
                      "search.space.quant={grid: [none, W8A16]}", "search.asha.enabled=false",
                      # two timing rounds, not five: the quick demo shows the phase, --full measures
                      # (five rounds of at least 1 s per model were 34 of the step's 57 s)
                      "timing.rounds=2", "timing.min_visit_s=0.25"]
    cfg = load_config(DEMO_CONFIG, SweepConfig, overrides)
    _, summary = run_sweep(cfg, config_path=str(DEMO_CONFIG))
    return summary

