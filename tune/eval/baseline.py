"""The sweep's baseline: the base evaluated once per (base content, benchmark items, eval config,
judge, hardware, engine) and kept in the store (kind "baseline"), so every candidate of every
sweep on that base is compared with the same, honestly keyed numbers.

    result, was_cached = baseline_cached(store, "exaone4-c", load, benchmarks, cfg.eval,
                                         spec=spec, hardware=hardware_key("cpu"), content=content)
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable

from cluster.models.registry import ModelSpec
from cluster.store.storage import ArtifactStore
from tune.eval.evaluate import Benchmark, EvalConfig, EvalResult, evaluate

log = logging.getLogger(__name__)

BASELINE_KIND = "baseline"
BASELINE_FILE = "baseline.json"
# Part of the baseline cache key: a change to the prompts or the scoring makes old baselines stale.
# 2: keyed by the base's content and the judge settings; judge details carry per-item ratings.
EVAL_VERSION = 2


def hardware_key(device=None) -> dict:
    """What sec_per_token depends on besides the model: {"device": "cpu" or the CUDA device name,
    "torch_threads": torch.get_num_threads()}. `device`: a torch.device, "cuda:0", "cpu" or None (cpu)."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    return {"device": name, "torch_threads": torch.get_num_threads()}


def baseline_cache_key(base_id: str, benchmarks: list[Benchmark], cfg: EvalConfig, hardware: dict,
                       spec: ModelSpec | None = None, *, content: dict) -> dict:
    """What identifies a baseline: the base's content (`cluster.models.content.model_content_key`), each
    benchmark's items (hashed) and scoring (a judge benchmark's judge too), the eval settings, the
    hardware and the chat template options. JSON-native, as the store compares it."""
    from tune.eval.judge_bench import judge_key

    if not isinstance(hardware, dict) or not hardware:
        raise ValueError(f"hardware: expected a non-empty dict like hardware_key(device) gives, got {hardware!r}")
    key = {
        "version": EVAL_VERSION,
        "base_id": base_id,
        "model": content,
        "benchmarks": [{"name": b.spec.name, "task": b.spec.task, "mode": b.spec.mode, "n": len(b.items),
                        "items_sha256": b.sha256, "max_new_tokens": b.spec.max_new_tokens,
                        "judge": judge_key(b.spec) if b.spec.task == "judge" else None} for b in benchmarks],
        "eval": cfg.model_dump(exclude={"benchmarks"}),
        "chat_template_kwargs": dict(spec.chat_template_kwargs) if spec is not None else None,
        "hardware": hardware,
    }
    return json.loads(json.dumps(key, sort_keys=True))  # what comes back from the store compares equal


def baseline_cached(store: ArtifactStore, base_id: str, load: Callable[[], tuple], benchmarks: list[Benchmark],
                    cfg: EvalConfig, *, spec: ModelSpec | None = None, hardware: dict,
                    content: dict) -> tuple[EvalResult, bool]:
    """The base's EvalResult, evaluated once per (base content, benchmark items, eval config,
    judge, hardware) and kept in `store` (kind "baseline"). `load()` returns (model, tokenizer)
    and is called only when nothing is stored. Returns (result, was_cached)."""
    key = baseline_cache_key(base_id, benchmarks, cfg, hardware, spec, content=content)
    run = store.find_cached(BASELINE_KIND, base_id, key, BASELINE_FILE)
    if run is not None:
        log.info("baseline of %s from the store: %s", base_id, run.prefix)
        return EvalResult.from_dict(store.get_json(f"{run.prefix}/{BASELINE_FILE}")["result"]), True
    model, tokenizer = load()
    result = evaluate(model, tokenizer, benchmarks, cfg, spec=spec, model_id=base_id)
    writer = store.new_run(BASELINE_KIND, base_id)
    writer.put_json(BASELINE_FILE, {"key": key, "result": result.to_dict()})
    writer.complete(cache_key=key)
    return result, False
