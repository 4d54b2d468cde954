"""The vLLM engine behind modelyard's own ingress: one candidate in vLLM's async engine (`AsyncLLM`).

The request side is the HF engine's (`serve.engine_hf.PromptSide`): the same tokenizer, chat
template, template options and token limits, so the ingress's checks, the OpenAI routes,
streaming, the API key and the probe route treat both engines alike. Generation is vLLM's:
every request goes to the engine as token ids the moment it arrives and vLLM batches them
continuously (no `@serve.batch` here); greedy at temperature 0; stop strings, seeds and
max_tokens per request; LoRA adapters as `LoRARequest`s on one base. A stream's client that
goes away cancels the request's generator, which aborts the request in the engine.

vLLM runs on CUDA GPUs only and is an optional extra (`cluster.engines.engine` has the version table);
the CPU tests drive this class with a stand-in engine, the GPU machine runs the real one
(BENCHMARKS.md, "Serve on vLLM through modelyard's ingress").

    >>> engine = VllmServeEngine(CandidateConfig(id="x", model="exaone", engine="vllm"), registry)  # doctest: +SKIP
    >>> await engine.generate(GenRequest(prompt=engine.render_chat(msgs), max_tokens=64, temperature=0))  # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

from cluster.engines.engine_vllm import VLLM_ENV_DEFAULTS, tensor_parallel_args
from cluster.models.loading import LoadError
from cluster.models.registry import ModelRegistry
from serve.config import CandidateConfig
from serve.engine_hf import GenRequest, GenResult, PromptSide, RequestError, candidate_source, resolve_model_dir

log = logging.getLogger(__name__)

GPU_MEMORY_UTILIZATION = 0.85  # default share of each GPU (candidates' engine_kwargs override it)


def _lora_rank(adapter_dir: str) -> int:
    return int(json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("r", 16))


def engine_args(candidate: CandidateConfig, path: str, dtype: str, *, adapters: dict[str, str],
                trust_remote_code: bool = False, revision: str | None = None) -> dict:
    """vLLM `AsyncEngineArgs` keyword arguments for `candidate` served from `path`; the
    candidate's own `engine_kwargs` win. ConfigError-worthy problems raise LoadError naming the field."""
    if candidate.num_gpus < 1 or candidate.num_gpus != int(candidate.num_gpus):
        raise LoadError(f"candidates.{candidate.id}.num_gpus: {candidate.num_gpus:g}: the vllm engine needs whole "
                        f"GPUs (1, or N for tensor parallelism)")
    kwargs: dict = dict(model=path, tokenizer=path, dtype=candidate.dtype if candidate.dtype != "auto" else dtype,
                        tensor_parallel_size=int(candidate.num_gpus), gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
                        trust_remote_code=trust_remote_code, revision=revision, disable_log_stats=True)
    if candidate.max_model_len is not None:
        kwargs["max_model_len"] = candidate.max_model_len
    if adapters:
        kwargs.update(enable_lora=True, max_loras=len(adapters),
                      max_lora_rank=max(_lora_rank(d) for d in adapters.values()))
    kwargs.update(candidate.engine_kwargs)
    return tensor_parallel_args(kwargs)  # no multicast all-reduce (cluster/engines/engine_vllm.py says why)


class VllmApi:
    """The three things this engine takes from vLLM, imported on first use (tests pass a stand-in)."""

    @staticmethod
    def start(kwargs: dict):
        """vLLM's AsyncLLM from engine kwargs, with the defaults vLLM's own OpenAI server takes
        (its usage context: on an H100/H200 up to 1,024 sequences and 8,192 tokens per step where
        the engine context would allow 128 and 2,048)."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs), usage_context=UsageContext.OPENAI_API_SERVER)

    @staticmethod
    def sampling(kind: str, **fields):
        """SamplingParams; `kind`: DELTA (streams) or FINAL_ONLY."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(output_kind=getattr(RequestOutputKind, kind), **fields)

    @staticmethod
    def lora(name: str, int_id: int, path: str):
        from vllm.lora.request import LoRARequest

        return LoRARequest(name, int_id, path)


class VllmServeEngine(PromptSide):
    """One candidate in vLLM's AsyncLLM. `generate` and `stream` are coroutines (the replica's
    event loop drives the engine); `render_chat` / `count_tokens` are PromptSide's. `api`: where
    the engine, sampling params and LoRA requests come from (`VllmApi`; tests pass a stand-in)."""

    engine_name = "vllm"

    def __init__(self, candidate: CandidateConfig, registry: ModelRegistry | None = None, *,
                 storage_uri: str = ".yard", endpoint_url: str | None = None, api=VllmApi):
        from transformers import AutoTokenizer

        for name, value in VLLM_ENV_DEFAULTS.items():  # the DNA hosts' own settings
            os.environ.setdefault(name, value)
        self.candidate = candidate
        self.spec, path, facts = candidate_source(candidate, registry, storage_uri, endpoint_url, gpu=True)
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=facts.get("revision"),
                                                       trust_remote_code=facts.get("trust_remote_code", False))
        self._tok_lock = threading.Lock()
        self.adapter_dirs = {name: resolve_model_dir(where, storage_uri, endpoint_url, marker="adapter_config.json")
                             for name, where in candidate.lora_adapters.items()}
        self.adapters = list(self.adapter_dirs)
        self.kwargs = engine_args(candidate, path, facts.get("dtype", "auto"), adapters=self.adapter_dirs,
                                  trust_remote_code=facts.get("trust_remote_code", False),
                                  revision=facts.get("revision"))
        self.api = api
        self.engine = api.start(self.kwargs)
        config = getattr(self.engine, "model_config", None)
        self.context_tokens = int(getattr(config, "max_model_len", 0) or 0) or None
        self.batch_sizes: list[int] = []  # vLLM batches continuously: no batch belongs to one request
        self.version = _vllm_version()

    def _lora(self, adapter: str | None):
        if adapter is None:
            return None
        if adapter not in self.adapter_dirs:
            raise RequestError(f"model: {self.candidate.id} has no adapter {adapter!r}")
        return self.api.lora(adapter, self.adapters.index(adapter) + 1, self.adapter_dirs[adapter])

    def _params(self, req: GenRequest, kind: str):
        greedy = req.temperature <= 0
        return self.api.sampling(kind, temperature=0.0 if greedy else req.temperature,
                                 top_p=1.0 if greedy else req.top_p, seed=req.seed, max_tokens=req.max_tokens,
                                 stop=[s for s in req.stop if s] or None, skip_special_tokens=True)

    def _prompt(self, req: GenRequest) -> tuple[dict, int]:
        """The prompt as vLLM takes it: the ids the request's check counted (`prepare`, off the event
        loop), else tokenized here."""
        ids = req.prompt_token_ids
        if ids is None:
            ids = self.tokenize(req.prompt, req.add_special_tokens)
        return {"prompt_token_ids": ids}, len(ids)

    async def generate(self, req: GenRequest) -> GenResult:
        """One request's result; RequestError for an unknown adapter."""
        lora = self._lora(req.adapter)
        prompt, n_prompt = self._prompt(req)
        final = None
        outs = self.engine.generate(prompt, self._params(req, "FINAL_ONLY"), uuid.uuid4().hex, lora_request=lora)
        async with aclosing(outs):  # a cancelled call closes vLLM's generator now, which aborts the request
            async for out in outs:
                final = out
        if final is None or not final.outputs:
            raise RuntimeError(f"vLLM gave no output for a request to {self.candidate.id}")
        best = final.outputs[0]
        return GenResult(best.text, n_prompt, len(best.token_ids), _reason(best.finish_reason), 0)

    async def stream(self, req: GenRequest) -> AsyncIterator[dict]:
        """{"text": piece} as tokens arrive, then {"finish_reason", "prompt_tokens",
        "completion_tokens"}, as `HFEngine.stream`. Closing the iterator aborts the request."""
        lora = self._lora(req.adapter)
        prompt, n_prompt = self._prompt(req)
        produced, reason = 0, "length"
        outs = self.engine.generate(prompt, self._params(req, "DELTA"), uuid.uuid4().hex, lora_request=lora)
        # closed with this stream, at once: an async generator left to the garbage collector would
        # keep the request generating in the engine until some later finalizer ran
        async with aclosing(outs):
            async for out in outs:
                for best in out.outputs[:1]:
                    produced += len(best.token_ids)
                    if best.text:
                        yield {"text": best.text}
                    if best.finish_reason is not None:
                        reason = _reason(best.finish_reason)
        yield {"finish_reason": reason, "prompt_tokens": n_prompt, "completion_tokens": produced}

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()


def _reason(finish_reason: str | None) -> str:
    """vLLM's finish reason in OpenAI's words: "length" at max_tokens, "stop" at EOS or a stop string."""
    return "length" if finish_reason == "length" else "stop"


def _vllm_version() -> str:
    from cluster.engines.engine import vllm_version

    return vllm_version() or "stand-in"
