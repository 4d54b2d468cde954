"""One sweep trial: load -> BI prune -> FFN prune -> distil -> LoRA heal -> quantize -> evaluate.

`run_trial` is the Ray Tune function trainable (wrapped by `tune.sweep.sweep` with `tune.with_parameters`
and `tune.with_resources`). It reports after every stage, so ASHA can stop a poor recipe early:

    iteration 1  prune      val_loss (LM loss on the holdout texts), layers
    iteration 2  distil     val_loss, kd_loss
    iteration 3  heal       val_loss, heal_loss
    iteration 4  evaluate   val_loss, perf, perf.<bench>, sec_per_token, perf_norm, speed_norm, score,
                            size_mb, candidate (the store prefix holding model/)

Quantization runs in this process, or with `quant.python` in a child process of another Python
environment (llmcompressor's, when this one holds vLLM). Evaluation runs on the saved folder,
reloaded by transformers (`eval.engine: hf`) or by vLLM exactly as packaged (`vllm`; a folder it
cannot load fails the trial with vLLM's own line).

Everything shared by all trials was computed once by the sweep's prepare step and is read, never
recomputed: the BI scores (passed in), the teacher's top-k logits (store kind "teacher"), the
baseline (passed in). A trial whose candidate is already complete in the store (a resumed sweep
that lost the trial's bookkeeping) reports the stored result instead of redoing the work.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CANDIDATE_KIND = "candidate"
CANDIDATE_FILE = "candidate.json"
STAGES = ("prune", "distil", "heal", "evaluate")


@dataclass
class TrialSetup:
    """What every trial of one sweep shares (shipped once through the Ray object store)."""

    sweep: dict  # SweepConfig.model_dump()
    sweep_name: str
    sweep_run: str
    registry_paths: list[str]
    store_uri: str
    endpoint_url: str | None
    job_id: str
    calibration: list[str]
    holdout: list[str]
    bi_scores: list[float]
    teacher_key: dict
    baseline: dict  # EvalResult.to_dict() of the base
    benchmarks: list = field(default_factory=list)  # tune.eval.evaluate.Benchmark, loaded and checked up front
    cuda_capabilities: tuple[float, ...] = ()


def kd_samples_max(setup: TrialSetup) -> int:
    """How many calibration texts the prepare step ran the teacher on (the space's largest kd_samples)."""
    return int(setup.teacher_key["texts"])


def candidate_id(setup: TrialSetup, trial_id: str) -> str:
    return f"{setup.sweep_name}.{setup.sweep_run}.{trial_id}"


def _stored_result(store, cid: str) -> dict | None:
    run = next((r for r in reversed(store.runs(CANDIDATE_KIND, cid)) if r.ok), None)
    if run is None:
        return None
    return store.get_json(f"{run.prefix}/{CANDIDATE_FILE}")["metrics"]


def _report(metrics: dict, checkpoint_payload: dict | None = None) -> None:
    from ray import tune

    if checkpoint_payload is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, CANDIDATE_FILE).write_text(json.dumps(checkpoint_payload, indent=2, default=str))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _round(x, nd: int = 6):
    return None if x is None else round(float(x), nd)


def run_trial(config: dict, setup: TrialSetup) -> None:
    """The Tune function trainable; see the module docstring for what it reports."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    metrics = run_pipeline(config, setup, trial_id, report=_report)
    log.info("trial %s done: score %s", trial_id, metrics.get("score"))


def run_pipeline(config: dict, setup: TrialSetup, trial_id: str, report=_report) -> dict:
    """The trial's work, with `report(metrics, checkpoint_payload=None)` called after each stage
    (separate from Tune so it can be tested and benchmarked without a cluster)."""
    from cluster.store.storage import open_store
    from tune.config import SweepConfig

    # llmcompressor logs every layer it touches; a sweep's log is for trials, not layers.
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = SweepConfig.model_validate(setup.sweep)
    store = open_store(setup.store_uri, setup.endpoint_url)
    cid = candidate_id(setup, trial_id)
    stored = _stored_result(store, cid)
    if stored is not None:
        # Resumed after a crash that lost Tune's record of this finished trial: nothing is redone.
        log.info("trial %s: candidate already complete in the store; reporting it", trial_id)
        for stage in STAGES[:-1]:
            report({"stage": stage, "val_loss": stored.get("val_loss"), "resumed_from_store": True})
        report({**stored, "resumed_from_store": True})
        return stored

    started = time.perf_counter()
    reporter = trial_reporter(store, setup.job_id, trial_id, cfg.stall_after_s)
    # until its base is loaded a trial is under the load limit, as a DNA host is: a fresh process
    # (a rerun, reuse_trial_process false) imports the compression stack before its first phase
    reporter.phase("starting", item=cfg.base, stall_after_s=cfg.load_stall_after_s)
    try:
        metrics = _pipeline(config, setup, trial_id, cfg, store, cid, started, reporter, report)
    except BaseException as exc:
        from cluster.ops.progress import one_line

        reporter.finish("failed", one_line(exc))
        raise
    reporter.finish("succeeded")
    return metrics


def trial_task(trial_id: str) -> str:
    """A trial's progress record (`yard status`; the sweep's watchdog reads its heartbeat)."""
    return f"trial-{trial_id}"


def trial_reporter(store, job_id: str | None, trial_id: str, stall_after_s: float):
    from cluster.ops.progress import NullReporter, ProgressReporter

    if not job_id:
        return NullReporter()
    return ProgressReporter(store, job_id, task=trial_task(trial_id), stall_after_s=stall_after_s)


def _pipeline(config: dict, setup: TrialSetup, trial_id: str, cfg, store, cid: str, started: float, reporter,
              report) -> dict:
    import torch

    from cluster.models.loading import load_model, release_memory
    from cluster.models.registry import ModelRegistry
    from tune.compress.distill import distill, stored_teacher_logits
    from tune.compress.ffn import ffn_importance, prune_ffn
    from tune.compress.heal import lora_heal
    from tune.compress.lm import lm_loss
    from tune.compress.prune import choose_layers, remove_layers
    from tune.compress.quantize import load_quantized, quantize, quantize_elsewhere, weights_size_bytes
    from tune.eval.evaluate import EvalResult, evaluate
    from tune.eval.judge_bench import aligned_perf
    from tune.eval.score import ScoreBreakdown, score_breakdown

    def beat(step: int) -> None:
        reporter.heartbeat(step=step)

    threads = max(1, int(cfg.resources.cpus_per_trial))
    torch.set_num_threads(threads)  # a trial owns the CPUs Ray gave it, and no more
    store.put_state(f"sweeps/{setup.sweep_name}/{setup.sweep_run}/starts/{trial_id}-{time.time_ns()}",
                    {"trial_id": trial_id, "config": config, "pid": os.getpid()})
    depth, kd_samples = int(config["prune_depth"]), int(config["kd_samples"])
    lora_rank, scheme = int(config["lora_rank"]), str(config["quant"])
    ffn_keep = float(config.get("ffn_keep_ratio", 1.0))

    registry = ModelRegistry.load(setup.registry_paths)
    spec = registry.get(cfg.base)
    reporter.phase("loading", item=cfg.base, stall_after_s=cfg.load_stall_after_s)
    model, tokenizer, _ = load_model(cfg.base, registry)
    max_length = cfg.calibration.max_length

    # 1. prune: BI scores come from the prepare step, computed once per base.
    reporter.phase("prune", item=cfg.base)
    drop = choose_layers(setup.bi_scores, depth, consecutive=cfg.prune.consecutive) if depth else []
    if drop:
        remove_layers(model, drop)
    if ffn_keep < 1.0:
        importance = ffn_importance(model, tokenizer, setup.calibration, max_tokens=max_length)
        prune_ffn(model, ffn_keep, importance)
    layers = int(model.config.num_hidden_layers)
    val = lm_loss(model, tokenizer, setup.holdout, max_length=max_length, add_special_tokens=False)
    report({"stage": "prune", "val_loss": val, "layers": layers, "removed_layers": drop})

    # 2. distil from the unpruned base's cached top-k logits (never recomputed here).
    kd_loss = None
    reporter.phase("distil", item=cfg.base)
    if kd_samples:
        cache = stored_teacher_logits(store, cfg.base, setup.calibration[:kd_samples_max(setup)],
                                      top_k=setup.teacher_key["top_k"], max_length=setup.teacher_key["max_length"],
                                      content=setup.teacher_key["content"])
        if cache is None:
            raise RuntimeError(f"teacher logits for {cfg.base} are missing from the store; the sweep's prepare "
                               f"step writes them before any trial starts")
        model.train()
        stats = distill(model, cache, kd_samples=kd_samples, temperature=cfg.kd.temperature, steps=cfg.kd.steps,
                        lr=cfg.kd.lr, batch_size=cfg.kd.batch_size, on_step=beat)
        model.eval()
        kd_loss = stats["kd_loss_last"]
    val = lm_loss(model, tokenizer, setup.holdout, max_length=max_length, add_special_tokens=False)
    report({"stage": "distil", "val_loss": val, "kd_loss": kd_loss})

    # 3. heal with LoRA, merged (rank 0: untouched).
    reporter.phase("heal", item=cfg.base)
    model, heal = lora_heal(model, tokenizer, setup.calibration, rank=lora_rank,
                            alpha=int(round(cfg.heal.alpha_per_rank * lora_rank)) if lora_rank else None,
                            steps=cfg.heal.steps, lr=cfg.heal.lr, batch_size=cfg.heal.batch_size,
                            max_length=max_length, on_step=beat)
    val = lm_loss(model, tokenizer, setup.holdout, max_length=max_length, add_special_tokens=False)
    report({"stage": "heal", "val_loss": val, "heal_loss": heal.get("heal_loss_last")})

    # 4. quantize, reload the saved candidate, evaluate it as the base was evaluated.
    work = Path(tempfile.mkdtemp(prefix=f"yard-trial-{trial_id}-"))
    try:
        reporter.phase("quantize", item=cfg.base)
        quant_args = dict(num_calibration_samples=cfg.quant.num_calibration_samples,
                          max_seq_length=cfg.quant.max_seq_length, cuda_capabilities=setup.cuda_capabilities)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        candidate = None
        if cfg.quant.python and scheme != "none":  # llmcompressor in an environment of its own
            model.save_pretrained(work / "healed")
            tokenizer.save_pretrained(work / "healed")
            del model
            release_memory()
            q, final_val = quantize_elsewhere(cfg.quant.python, work / "healed", scheme, setup.calibration,
                                              work / "model", holdout=setup.holdout, max_length=max_length,
                                              threads=threads, on_wait=lambda: reporter.heartbeat(child="quantize"), **quant_args)
            shutil.rmtree(work / "healed", ignore_errors=True)
        else:
            q = quantize(model, tokenizer, scheme, setup.calibration, work / "model", **quant_args)
            del model
            release_memory()
            candidate = load_quantized(q.path, device=device)
            final_val = lm_loss(candidate, tokenizer, setup.holdout, max_length=max_length, add_special_tokens=False)
        reporter.phase("evaluate", item=cid)
        on_progress = lambda name, done, total: reporter.heartbeat(benchmark=name, batch=done)  # noqa: E731
        if cfg.eval.engine.name == "vllm":  # the saved folder, exactly as packaged, in vLLM
            from cluster.engines.engine_vllm import load_vllm_dir

            del candidate
            release_memory()
            # tensor parallel as the base's baseline ran (its registry num_gpus; validate() checked the trial has them)
            candidate = load_vllm_dir(cid, q.path, cfg.eval.engine.vllm, num_gpus=spec.num_gpus)
            try:
                result = evaluate(candidate, tokenizer, setup.benchmarks, cfg.eval, spec=spec, model_id=cid,
                                  on_progress=on_progress)
            finally:
                candidate.close()
        else:
            if candidate is None:  # quantized elsewhere: the saved folder, loaded here as the base was
                candidate = load_quantized(q.path, device=device)
            result = evaluate(candidate, tokenizer, setup.benchmarks, cfg.eval, spec=spec, model_id=cid,
                              on_progress=on_progress)
        base = EvalResult.from_dict(setup.baseline)
        # judge benchmarks: both perfs over the turns rated for both (an unparsed judgment of either
        # model drops that turn from both), so the ratio compares like with like
        perf, base_perf, left_out = aligned_perf(result, base)
        if base_perf > 0:
            parts = score_breakdown(perf, result.sec_per_token, base_perf, base.sec_per_token)
        else:  # PerfNorm divides by the base's perf: a base that scores 0 (random weights) leaves no Score
            speed = score_breakdown(1.0, result.sec_per_token, 1.0, base.sec_per_token).speed_norm
            parts = ScoreBreakdown(None, speed, None)
            log.warning("trial %s: the base's perf is 0 on every benchmark: PerfNorm and Score are undefined; "
                        "speed_norm %.4f kept", trial_id, speed)
        metrics = {
            "stage": "evaluate", "val_loss": final_val, "layers": layers, "kd_loss": kd_loss,
            "heal_loss": heal.get("heal_loss_last"), "perf": perf,
            **{f"perf.{name}": value for name, value in result.perf.items()},
            "sec_per_token": result.sec_per_token, "generated_tokens": result.generated_tokens,
            "perf_norm": parts.perf_norm, "speed_norm": parts.speed_norm, "score": parts.score,
            "baseline_perf": base_perf, "judge_left_out": sum(left_out.values()),
            "size_mb": weights_size_bytes(q.path) / 1e6, "quant_seconds": q.seconds,
            "seconds": time.perf_counter() - started,
        }
        # provisional speed: timed beside other trials; the sweep's timing phase replaces it (tune/sweep/timing.py)
        metrics = {k: (_round(v) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}
        writer = store.new_run(CANDIDATE_KIND, cid)
        writer.put_dir("model", q.path)
        metrics["candidate"] = writer.prefix
        payload = {"trial_id": trial_id, "sweep": setup.sweep_name, "sweep_run": setup.sweep_run,
                   "base": cfg.base, "parent": cfg.base, "config": config, "removed_layers": drop,
                   "metrics": metrics, "eval": result.to_dict(), "quant": q.details, "heal": heal,
                   "derivation": _derivation(config)}
        writer.put_json(CANDIDATE_FILE, payload)
        writer.complete(trial_id=trial_id, score=metrics["score"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(metrics, {"candidate": metrics["candidate"], "trial_id": trial_id, "config": config})
    return metrics


def _derivation(config: dict) -> str:
    """A short recipe name, e.g. `prune2+kd32+lora8+W4A16`."""
    parts = []
    if int(config["prune_depth"]):
        parts.append(f"prune{int(config['prune_depth'])}")
    if float(config.get("ffn_keep_ratio", 1.0)) < 1.0:
        parts.append(f"ffn{float(config['ffn_keep_ratio']):.2f}")
    if int(config["kd_samples"]):
        parts.append(f"kd{int(config['kd_samples'])}")
    if int(config["lora_rank"]):
        parts.append(f"lora{int(config['lora_rank'])}")
    if config["quant"] != "none":
        parts.append(str(config["quant"]))
    return "+".join(parts) or "copy"
