"""The compression sweep's timing phase as one Ray task: the base and each candidate, loaded as the
sweep made them, timed alone by `tune.sweep.timing.time_models` after every trial has finished.

Apart from tune/sweep/timing.py (how models are timed fairly, and `TimingConfig`, which the sweep's
config composes) because this task rebuilds the sweep's own config (`tune.config.SweepConfig`):
the config imports timing, and this module imports both.

    timing = time_candidates(cfg, registry_paths, store, benchmarks, {trial_id: store_prefix}, job_id)
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from tune.config import SweepConfig
from tune.sweep.timing import BASELINE, Loader, time_models

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
    reporter = None
    if job_id is not None:
        from cluster.ops.progress import ProgressReporter

        reporter = ProgressReporter(store, job_id, task="timing", total=len(candidates) * cfg.timing.rounds)
        reporter.phase("timing", item=cfg.base)

    def texts_for(tokenizer):
        return render_for(tokenizer, cfg.eval, spec, cfg.base, prompts)

    with tempfile.TemporaryDirectory(prefix="yard-timing-") as tmp:
        loaders: dict[str, Loader] = {BASELINE: lambda: load_model(cfg.base, registry)[:2]}
        for trial_id, prefix in candidates.items():
            path = _model_dir(store, prefix, Path(tmp))
            loaders[trial_id] = lambda path=path: (load_quantized(path, device=device), _tokenizer(path))
        on_visit = None if reporter is None else (lambda done, total, name: reporter.advance(item=name))
        result = time_models(loaders, texts_for, cfg.timing, cfg.timing.batch_size or cfg.eval.batch_size,
                             on_visit=on_visit)
    if reporter is not None:
        reporter.finish("succeeded")
    result["device"] = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    result["torch_threads"] = torch.get_num_threads()
    return result


def time_candidates(cfg, registry_paths: list[str], store, benchmarks: list,
                    candidates: dict[str, str], job_id: str | None) -> dict:
    """The timing phase (`run_timing`) as one Ray task, after every trial has finished: the base
    and each candidate timed alone, interleaved and repeated. A whole GPU when trials use one."""
    import ray

    gpus = 1 if cfg.resources.gpus_per_trial > 0 else 0
    task = ray.remote(run_timing).options(num_cpus=cfg.resources.cpus_per_trial, num_gpus=gpus)
    timing = ray.get(task.remote(cfg.model_dump(), registry_paths, store.uri, cfg.storage.endpoint_url,
                                 benchmarks, candidates, job_id))
    log.info("timing phase: %d models x %d rounds", len(timing["models"]), timing["rounds"])
    return timing


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
