"""The HF transformers engine: one model (plus its LoRA adapters) generating for many requests at once.

A plain class, testable and benchmarkable without Ray Serve; `serve.app` wraps it in a deployment
whose `@serve.batch` method hands it the requests that arrived together. A batch is left padded and
generated in one `model.generate` per distinct sampling setting; each row keeps its own max_tokens
and stop strings. LoRA adapters stay separate from one base copy (peft), chosen per row.

    >>> engine = HFEngine(CandidateConfig(id="llama-a", model="llama-a"), registry)    # doctest: +SKIP
    >>> text = engine.render_chat([{"role": "user", "content": "hi"}], {"enable_thinking": False})  # doctest: +SKIP
    >>> engine.generate([GenRequest(prompt=text, max_tokens=16, temperature=0)])[0].text   # doctest: +SKIP
"""
from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from cluster.config import UserError
from cluster.models.loading import LoadError, chat_prompt, hf_cache_dir, load_model
from cluster.models.registry import ModelRegistry, ModelSpec
from serve.config import CandidateConfig

log = logging.getLogger(__name__)
BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch


class RequestError(UserError, ValueError):
    """A request this model cannot run (bad template input, unknown adapter), as one line."""


@dataclass
class GenRequest:
    """One generation. temperature 0 means greedy; `prompt` is already rendered text."""

    prompt: str
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    adapter: str | None = None
    seed: int | None = None
    add_special_tokens: bool = False  # chat templates hold BOS already; raw completions do not
    prompt_token_ids: list[int] | None = None  # `prompt` tokenized already (the vLLM engine takes them as they are)


@dataclass
class GenResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    batch_size: int  # rows generated together with this one

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_model_dir(path: str, storage_uri: str = ".yard", endpoint_url: str | None = None,
                      marker: str = "config.json") -> str:
    """A local directory holding `marker` for `path`: an HF dir (or one whose model/ is), an
    s3:// dir, or a store key prefix (a sweep candidate, whose model/ is the HF dir) downloaded once
    into the HF cache. LoadError naming the path when none of these holds the marker."""
    local = Path(path).expanduser()
    for cand in (local, local / "model"):
        if (cand / marker).is_file():
            return str(cand)
    from cluster.store.storage import open_store

    if path.startswith("s3://"):
        bucket_and_prefix = path[len("s3://"):].strip("/")
        bucket, _, prefix = bucket_and_prefix.partition("/")
        store, where = open_store(f"s3://{bucket}", endpoint_url), f"s3://{bucket}"
    else:
        if local.is_absolute() or path.startswith((".", "~")):
            raise LoadError(f"path {path}: no {marker} there or in its model/ folder")
        store, where, prefix = open_store(storage_uri, endpoint_url), storage_uri, path.strip("/")
    for folder in (f"{prefix}/model/", f"{prefix}/"):
        keys = [k for k in store.list_keys(folder) if "/" not in k[len(folder):]]
        if folder + marker in keys:
            target = hf_cache_dir() / "yard-serve" / where.replace("://", "/").strip("/") / folder.strip("/")
            if not (target / ".complete").exists():
                for key in keys:
                    store.download(key, target / key[len(folder):])
                (target / ".complete").write_text("ok")
            return str(target)
    raise LoadError(f"path {path}: no {marker} under {where}/{prefix} or its model/ folder")


def _path_spec(model_dir: str) -> ModelSpec:
    """A registry entry for a bare model dir: size from its weight files (the load decision's
    memory check needs one), fp32 compute on CPU like every other model."""
    weight_bytes = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")) or 4
    return ModelSpec(source=str(Path(model_dir).resolve()), params_b=weight_bytes / 4 / 1e9, dtype="fp32", load_in="bf16")


class _StopFlag:
    """A stopping criterion another thread can raise (a streaming client hit a stop string, or
    went away: `cancel` set)."""

    def __init__(self, cancel: threading.Event | None = None):
        self.stop = False
        self.cancel = cancel

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        stop = self.stop or (self.cancel is not None and self.cancel.is_set())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class PromptSide:
    """The request side both engines share (this one and `serve.engine_vllm`): the served ids, the
    chat template with its options (registry < candidate < request) and token counts. Needs
    `candidate`, `spec`, `tokenizer` and `_tok_lock` (fast tokenizers are not thread-safe)."""

    candidate: CandidateConfig
    spec: ModelSpec

    def model_ids(self) -> list[str]:
        return self.candidate.served_ids()

    def render_chat(self, messages: list[dict], template_kwargs: dict | None = None) -> str:
        """The chat template applied to `messages`; template options: registry < candidate < request."""
        kwargs = {**self.candidate.chat_template_kwargs, **(template_kwargs or {})}
        try:
            with self._tok_lock:
                return chat_prompt(self.tokenizer, messages, self.spec, self.candidate.id, **kwargs)
        except UserError:
            raise
        except Exception as exc:  # a template that raises on its input (roles, types) is the request's fault
            raise RequestError(f"messages: the chat template rejected them ({str(exc).splitlines()[0]})") from None

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        with self._tok_lock:
            return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def count_tokens(self, text: str, add_special_tokens: bool = False) -> int:
        return len(self.tokenize(text, add_special_tokens))



def candidate_source(candidate: CandidateConfig, registry: ModelRegistry | None, storage_uri: str,
                     endpoint_url: str | None, *, gpu: bool = False) -> tuple[ModelSpec, str, dict]:
    """(registry entry, local model dir, load facts) for a candidate: its registry model (the load
    decision's dtype, revision, remote-code flag) or its path (an HF dir, s3:// dir or store prefix,
    downloaded once). `gpu`: decide as for a CUDA node (the vLLM engine)."""
    if candidate.model is not None:
        if registry is None:
            raise LoadError(f"candidate {candidate.id}: model {candidate.model!r} needs a registry")
        from cluster.models.loading import decide_load, resolve_source
        from cluster.node import node_facts

        spec = registry.get(candidate.model)
        plan = decide_load(candidate.model, spec, node_facts())
        if gpu and plan.device_map is None:
            raise LoadError(f"candidate {candidate.id}: the vllm engine needs a CUDA GPU; this node has none")
        return spec, resolve_source(plan), {"dtype": plan.dtype, "revision": plan.revision,
                                            "trust_remote_code": plan.trust_remote_code}
    model_dir = resolve_model_dir(candidate.path, storage_uri, endpoint_url)
    return _path_spec(model_dir), model_dir, {}


class HFEngine(PromptSide):
    """One candidate's model on this process: renders prompts, counts tokens, generates batches.

    `batch_sizes` records the size of every generate call (the app's batching test reads it).
    Calls into the model are serialised by a lock: a replica runs one generate at a time, which
    is what `@serve.batch(max_concurrent_batches=1)` assumes anyway."""

    def __init__(self, candidate: CandidateConfig, registry: ModelRegistry | None = None, *,
                 storage_uri: str = ".yard", endpoint_url: str | None = None):
        self.candidate = candidate
        if candidate.model is not None:
            if registry is None:
                raise LoadError(f"candidate {candidate.id}: model {candidate.model!r} needs a registry")
            self.spec = registry.get(candidate.model)
            self.model, self.tokenizer, self.plan = load_model(candidate.model, registry)
        else:
            model_dir = resolve_model_dir(candidate.path, storage_uri, endpoint_url)
            self.spec = _path_spec(model_dir)
            self.model, self.tokenizer, self.plan = load_model(candidate.id, ModelRegistry({candidate.id: self.spec}))
        self.adapters = list(candidate.lora_adapters)
        if self.adapters:
            self.model = self._load_adapters(storage_uri, endpoint_url)
        self.tokenizer.padding_side = "left"  # every row continues from the right edge
        self.context_tokens = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()
        # Fast tokenizers are not safe to call from two threads at once ("Already borrowed"):
        # requests are prepared on the replica's event loop while a batch generates in a thread.
        self._tok_lock = threading.Lock()
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos = self.tokenizer.eos_token_id if eos is None else eos
        self._eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])

    def _load_adapters(self, storage_uri: str, endpoint_url: str | None):
        from peft import PeftModel

        peft_model = None
        for name, where in self.candidate.lora_adapters.items():
            adapter_dir = resolve_model_dir(where, storage_uri, endpoint_url, marker="adapter_config.json")
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(self.model, adapter_dir, adapter_name=name)
            else:
                peft_model.load_adapter(adapter_dir, adapter_name=name)
            log.info("candidate %s: LoRA adapter %s from %s", self.candidate.id, name, adapter_dir)
        peft_model.eval()
        return peft_model

    # --- generation -----------------------------------------------------------------------
    def _sampling_kwargs(self, req: GenRequest) -> dict:
        if req.temperature > 0:
            return dict(do_sample=True, temperature=req.temperature, top_p=req.top_p)
        # a checkpoint's generation_config may ask for sampling: unset it so greedy is greedy
        return dict(do_sample=False, temperature=None, top_p=None, top_k=None)

    def _adapter_kwargs(self, reqs: list[GenRequest]) -> dict:
        if not self.adapters:
            if any(r.adapter for r in reqs):
                raise RequestError(f"model: {self.candidate.id} has no LoRA adapters")
            return {}
        for r in reqs:
            if r.adapter is not None and r.adapter not in self.adapters:
                raise RequestError(f"model: {self.candidate.id} has no adapter {r.adapter!r}")
        return {"adapter_names": [r.adapter or BASE_ADAPTER for r in reqs]}

    def _finish(self, req: GenRequest, new_ids: list[int], prompt_tokens: int, batch_size: int) -> GenResult:
        """Cut a row at its first EOS and its own max_tokens, then at its first stop string."""
        cut, reason = len(new_ids), "length"
        for i, tok in enumerate(new_ids):
            if tok in self._eos_ids:
                cut, reason = i, "stop"
                break
        if cut >= req.max_tokens:
            cut, reason = req.max_tokens, "length"
        kept = new_ids[:cut]
        with self._tok_lock:
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
        n_tokens = len(kept) + (1 if reason == "stop" else 0)  # the EOS was generated too
        hits = [text.index(s) for s in req.stop if s and s in text]
        if hits:
            text = text[:min(hits)]
            n_tokens, reason = self.count_tokens(text), "stop"
        return GenResult(text, prompt_tokens, n_tokens, reason, batch_size)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """A result per request, in order. Requests sharing sampling settings run as one left-padded
        batch (up to the largest max_tokens among them); RequestError for an unknown adapter."""
        import torch

        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            key = (r.temperature if r.temperature > 0 else 0.0, r.top_p if r.temperature > 0 else 1.0,
                   r.seed, r.add_special_tokens)
            groups.setdefault(key, []).append(i)
        results: list[GenResult | None] = [None] * len(requests)
        for (_, _, seed, add_special), idx in groups.items():
            reqs = [requests[i] for i in idx]
            extra = self._adapter_kwargs(reqs)
            with self._tok_lock:
                inputs = self.tokenizer([r.prompt for r in reqs], return_tensors="pt", padding=True,
                                        add_special_tokens=add_special).to(self.model.device)
            prompt_lens = inputs["attention_mask"].sum(dim=1).tolist()
            with self._lock, torch.inference_mode():
                if seed is not None:
                    torch.manual_seed(seed)
                out = self.model.generate(**inputs, **self._sampling_kwargs(reqs[0]), **extra,
                                          max_new_tokens=max(r.max_tokens for r in reqs),
                                          pad_token_id=self.tokenizer.pad_token_id)
                self.batch_sizes.append(len(reqs))
            new = out[:, inputs["input_ids"].shape[1]:].cpu().tolist()
            for row, i in enumerate(idx):
                results[i] = self._finish(requests[i], new[row], int(prompt_lens[row]), len(reqs))
        return results  # type: ignore[return-value]

    def stream(self, req: GenRequest, cancel: threading.Event | None = None) -> Iterator[dict]:
        """Yield {"text": piece} as tokens arrive, then one {"finish_reason", "prompt_tokens",
        "completion_tokens"}. A stop string ends the stream before it (the model is told to stop);
        so does `cancel` (the client went away), at the next token."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        extra = self._adapter_kwargs([req])
        with self._tok_lock:
            inputs = self.tokenizer([req.prompt], return_tensors="pt",
                                    add_special_tokens=req.add_special_tokens).to(self.model.device)
        tok_lock = self._tok_lock

        class LockedStreamer(TextIteratorStreamer):
            # decodes in the generate thread: under the tokenizer lock, like every other use
            def put(self, value):
                with tok_lock:
                    super().put(value)

            def end(self):
                with tok_lock:
                    super().end()

        streamer = LockedStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        flag = _StopFlag(cancel)
        produced: dict = {}

        def run():
            try:
                with self._lock, torch.inference_mode():
                    if req.seed is not None:
                        torch.manual_seed(req.seed)
                    out = self.model.generate(**inputs, **self._sampling_kwargs(req), **extra, streamer=streamer,
                                              max_new_tokens=req.max_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                              stopping_criteria=StoppingCriteriaList([flag]))
                    self.batch_sizes.append(1)
                produced["ids"] = out[0, inputs["input_ids"].shape[1]:].tolist()
            except Exception as exc:  # surfaced to the consumer below, not lost in the thread
                produced["error"] = exc
                streamer.end()

        worker = threading.Thread(target=run, daemon=True, name=f"stream-{self.candidate.id}")
        worker.start()
        text, sent, hit = "", 0, None
        hold = max((len(s) for s in req.stop if s), default=1) - 1  # chars a stop string may still claim
        for piece in streamer:
            text += piece
            hits = [text.index(s) for s in req.stop if s and s in text]
            if hits:
                hit = min(hits)
                flag.stop = True
                break
            safe = len(text) - hold
            if safe > sent:
                yield {"text": text[sent:safe]}
                sent = safe
        if hit is not None:
            for _ in streamer:  # drain, so the generate thread can finish and free the lock
                pass
        worker.join()
        if "error" in produced:
            raise produced["error"]
        end = hit if hit is not None else len(text)
        if end > sent:
            yield {"text": text[sent:end]}
        result = self._finish(GenRequest(req.prompt, req.max_tokens, stop=[]), produced.get("ids", []), 0, 1)
        reason = "stop" if hit is not None else result.finish_reason
        completion = self.count_tokens(text[:end]) if hit is not None else result.completion_tokens
        yield {"finish_reason": reason, "prompt_tokens": int(inputs["input_ids"].shape[1]),
               "completion_tokens": completion}
