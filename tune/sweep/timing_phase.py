"""The compression sweep's timing phase as one Ray task: the base and each candidate, loaded as the
sweep made them, timed alone by `tune.sweep.timing.time_models` after every trial has finished.

Apart from tune/sweep/timing.py (how models are timed fairly, and `TimingConfig`, which the sweep's
config composes) because this task rebuilds the sweep's own config (`tune.config.SweepConfig`):
the config imports timing, and this module imports both.

    timing = time_candidates(cfg, registry_paths, store, benchmarks, {trial_id: store_prefix}, job_id)

With `eval.engine: vllm` each visit is a process of its own (`time_one_vllm`, a Ray task that
never serves a second call), scheduled by `tune.sweep.timing.time_in_fresh_processes`.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from tune.config import SweepConfig
from tune.sweep.timing import BASELINE, Loader, check_tokens, time_in_fresh_processes, time_models

log = logging.getLogger(__name__)


def _model_dir(store, prefix: str, tmp: Path) -> Path:
    """A candidate's `model/` as a local directory (downloaded from an S3 store)."""
    if not store.uri.startswith("s3://"):
        return Path(store.uri) / prefix / "model"
    return store.download_folder(f"{prefix}/model", tmp / prefix.replace("/", "_"))


def run_timing(cfg_dict: dict, registry_paths: list[str], store_uri: str, endpoint_url: str | None,
               benchmarks: list, candidates: dict[str, str], job_id: str | None = None) -> dict:
    """The sweep's timing phase as one task: the base (as the trials load it) and each candidate
    (`{trial_id: store prefix}`, loaded from its saved `model/` as packaged) timed by `time_models`."""
    import torch

    from cluster.models.loading import load_model
    from cluster.models.registry import ModelRegistry
    from cluster.store.storage import open_store
    from tune.compress.quantize import load_quantized
    from tune.eval.evaluate import generation_prompts, render_for

    cfg = SweepConfig.model_validate(cfg_dict)
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_trial)))  # as a trial runs
    store = open_store(store_uri, endpoint_url)
    registry = ModelRegistry.load(registry_paths)
    spec = registry.get(cfg.base)
    prompts = generation_prompts(benchmarks, cfg.timing.prompts)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reporter, on_visit = _reporter(store, job_id, cfg, len(candidates))

    def texts_for(tokenizer):
        return render_for(tokenizer, cfg.eval, spec, cfg.base, prompts)

    with tempfile.TemporaryDirectory(prefix="yard-timing-") as tmp:
        loaders: dict[str, Loader] = {BASELINE: lambda: load_model(cfg.base, registry)[:2]}
        for trial_id, prefix in candidates.items():
            path = _model_dir(store, prefix, Path(tmp))
            loaders[trial_id] = lambda path=path: (load_quantized(path, device=device), _tokenizer(path))
        result = time_models(loaders, texts_for, cfg.timing, cfg.timing.batch_size or cfg.eval.batch_size,
                             on_visit=on_visit)
    if reporter is not None:
        reporter.finish("succeeded")
    result["device"] = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    result["torch_threads"] = torch.get_num_threads()
    return result


def time_one_vllm(cfg_dict: dict, registry_paths: list[str], store_uri: str, endpoint_url: str | None,
                  benchmarks: list, name: str, prefix: str | None) -> tuple[float, int, str]:
    """One visit of a vLLM sweep's timing phase, in a process of its own: the base (`prefix` None,
    loaded as the baseline was) or a candidate's saved `model/` in vLLM; one untimed generation,
    then `timing.repeats` generations of exactly `timing.new_tokens` tokens for each of the first
    `timing.prompts` prompts (EOS ignored), all handed to vLLM at once, garbage collection off while
    timed. Returns the fastest (seconds, tokens) and the GPU's name."""
    import torch

    from cluster.engines.engine_vllm import load_vllm, load_vllm_dir
    from cluster.models.registry import ModelRegistry
    from cluster.store.storage import open_store
    from tune.eval.evaluate import generation_prompts, render_for

    cfg = SweepConfig.model_validate(cfg_dict)
    registry = ModelRegistry.load(registry_paths)
    settings, timing = cfg.eval.engine.vllm, cfg.timing
    with tempfile.TemporaryDirectory(prefix="yard-timing-") as tmp:
        if prefix is None:
            model, tokenizer = load_vllm(cfg.base, registry, settings)[:2]
        else:
            path = _model_dir(open_store(store_uri, endpoint_url), prefix, Path(tmp))
            # as the trial evaluated it (tune/sweep/trial.py): on the base's num_gpus
            model = load_vllm_dir(name, str(path), settings, num_gpus=registry.get(cfg.base).num_gpus)
            tokenizer = _tokenizer(path)
        try:
            texts, special = render_for(tokenizer, cfg.eval, registry.get(cfg.base), cfg.base,
                                        generation_prompts(benchmarks, timing.prompts))
            ids = [tokenizer(t, add_special_tokens=special)["input_ids"] for t in texts]
            model.generate(ids[:1], max_new_tokens=2)  # untimed: first-call costs are not the model's speed
            best, tokens = float("inf"), 0
            for _ in range(timing.repeats):
                # garbage collection is off inside VllmModel.generate (and its seconds are generate's alone)
                out = model.generate(ids, max_new_tokens=timing.new_tokens, min_new_tokens=timing.new_tokens,
                                     ignore_eos=True)
                tokens = sum(out.new_tokens)
                check_tokens(f"timing {name}", tokens, len(ids) * timing.new_tokens)
                best = min(best, out.seconds)
        finally:
            model.close()
    return best, tokens, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def time_candidates(cfg, registry_paths: list[str], store, benchmarks: list,
                    candidates: dict[str, str], job_id: str | None) -> dict:
    """The timing phase after every trial has finished: the base and each candidate timed alone,
    interleaved and repeated. HF: one Ray task (`run_timing`), a whole GPU when trials use one.
    vLLM: every visit a Ray task of its own (`time_one_vllm`) on the base's num_gpus, as each trial evaluated."""
    import ray

    if cfg.eval.engine.name == "vllm":  # a visit loads on the base's num_gpus, as every trial did
        from cluster.models.registry import ModelRegistry

        tp = ModelRegistry.load(registry_paths).get(cfg.base).num_gpus
        return _time_vllm(cfg, registry_paths, store, benchmarks, candidates, job_id, tp)
    gpus = 1 if cfg.resources.gpus_per_trial > 0 else 0  # alone on a whole GPU, also where trials share one
    task = ray.remote(run_timing).options(num_cpus=cfg.resources.cpus_per_trial, num_gpus=gpus)
    timing = ray.get(task.remote(cfg.model_dump(), registry_paths, store.uri, cfg.storage.endpoint_url,
                                 benchmarks, candidates, job_id))
    log.info("timing phase: %d models x %d rounds", len(timing["models"]), timing["rounds"])
    return timing


def _time_vllm(cfg, registry_paths: list[str], store, benchmarks: list, candidates: dict[str, str],
               job_id: str | None, gpus: int, visit=None) -> dict:
    """`visit` is `time_one_vllm`; a test passes a CPU stand-in with its signature."""
    import ray

    # max_calls=1: the worker exits after its visit, so the next visit is a new process and its
    # engine the first. Ray takes max_calls in ray.remote only, not in .options().
    task = ray.remote(num_cpus=cfg.resources.cpus_per_trial, num_gpus=gpus, max_calls=1)(visit or time_one_vllm)
    args = (cfg.model_dump(), registry_paths, store.uri, cfg.storage.endpoint_url, benchmarks)
    reporter, on_visit = _reporter(store, job_id, cfg, len(candidates))
    devices = set()

    def measure(name: str) -> tuple[float, int]:
        seconds, tokens, device = ray.get(task.remote(*args, name, candidates.get(name)))
        devices.add(device)
        return seconds, tokens

    timing = time_in_fresh_processes(measure, list(candidates), cfg.timing, cfg.eval.engine.vllm.max_num_seqs,
                                     on_visit=on_visit)
    if reporter is not None:
        reporter.finish("succeeded")
    timing["device"] = " + ".join(sorted(devices)) + " (vLLM)"
    timing["torch_threads"] = None  # vLLM's own
    log.info("timing phase: %d models x %d rounds, each visit a process of its own (vLLM)", len(timing["models"]),
             timing["rounds"])
    return timing


def _reporter(store, job_id: str | None, cfg, candidates: int):
    """The timing phase's progress record (`yard status`) and its per-visit callback; (None, None)
    outside a job."""
    if job_id is None:
        return None, None
    from cluster.ops.progress import ProgressReporter

    reporter = ProgressReporter(store, job_id, task="timing", total=candidates * cfg.timing.rounds)
    reporter.phase("timing", item=cfg.base)
    return reporter, (lambda done, total, name: reporter.advance(item=name))


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
