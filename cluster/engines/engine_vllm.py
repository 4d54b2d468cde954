"""A registry model in vLLM's offline engine: load, generate from token ids, release.

The load decision is the HF path's (`cluster.models.loading.decide_load`: dtype, GPU count, memory), so
a model vLLM serves is the one the registry describes; the source is resolved the same way
(local dir, HF id, s3:// downloaded once). Prompts go in as token ids made by the model's own HF
tokenizer, so both engines see exactly the same input; decoding is greedy with the same
`max_new_tokens` / `min_new_tokens`, and `new_tokens` counts the generated ids up to and
including the first EOS, as `actors.generation` does.

The engine core runs in a child process by default (vLLM's own multiprocessing mode): `close()`
shuts it down and its exit returns every byte of GPU memory, which the host checks. In the host's
own process (`in_process: true`) a model starts ~30-60 s sooner, but vLLM 0.26 could not start a
second engine in a process after releasing the first (measured on the H200; BENCHMARKS.md).

    >>> model, tok, plan = load_vllm("exaone-4.0-1.2b", registry, VllmSettings())   # doctest: +SKIP
    >>> out = model.generate([tok("Hi")["input_ids"]], max_new_tokens=32)           # doctest: +SKIP
    >>> model.close()                                                                 # doctest: +SKIP
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.config import UserError
from cluster.engines.engine import VllmSettings, gc_paused, vllm_version
from cluster.models.loading import LoadError, check_checkpoint, decide_load, load_tokenizer, resolve_source
from cluster.models.registry import ModelRegistry
from cluster.node import NodeFacts, node_facts

log = logging.getLogger(__name__)

# set before vLLM reads them (it reads its environment lazily, per use)
VLLM_ENV_DEFAULTS = {
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_USE_FLASHINFER_SAMPLER": "0",  # greedy needs no FlashInfer sampler (and its JIT build)
    "TQDM_DISABLE": "1",  # weight-loading and CUDA-graph capture bars, once per model, from every host
}


# Tensor parallelism without NVLink multicast. vLLM 0.26's compiled graph fuses all-reduce with
# RMSNorm through FlashInfer, whose auto-selected "mnnvl" backend needs multicast memory: on
# 2 x H200 with multicast off (NCCL_NVLS_ENABLE=0 etc., as on shared machines) both workers died
# with "CUDA error: an illegal memory access" and the engine never came up; in eager mode (no
# fusion) the same model ran. Plain custom all-reduce (CUDA IPC) and NCCL stay.
TP_ENV_DEFAULTS = {"VLLM_ALLREDUCE_USE_SYMM_MEM": "0"}
TP_PASS_CONFIG = {"fuse_allreduce_rms": False}


def tensor_parallel_args(kwargs: dict, *, multicast: bool = False) -> dict:
    """`kwargs` (vLLM engine arguments, the user's own already in) with multicast all-reduce
    turned off where tensor_parallel_size > 1, unless `multicast` or the user's own
    `compilation_config` says otherwise; sets TP_ENV_DEFAULTS in this process's environment (vLLM's
    workers inherit it) where not set. Returns a new dict."""
    out = dict(kwargs)
    if int(out.get("tensor_parallel_size") or 1) <= 1 or multicast:
        return out
    for name, value in TP_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    user = out.get("compilation_config")
    if user is None:
        out["compilation_config"] = {"pass_config": dict(TP_PASS_CONFIG)}
    elif isinstance(user, dict):
        passes = {**TP_PASS_CONFIG, **(user.get("pass_config") or {})}
        out["compilation_config"] = {**user, "pass_config": passes}
    return out  # a compilation_config object or level the user gave is theirs


class EngineLoadFailed(UserError, RuntimeError):
    """vLLM could not start an engine on a model (its config and weights disagree, a kernel is
    missing, memory ran out): unlike a missing path, not known to be deterministic, so the host
    retries it once as any model-level error and skips it when the second start fails the same way,
    as with a checkpoint transformers cannot load."""


class EngineDied(RuntimeError):
    """A vLLM engine's processes died while it started (`EngineWatch`): an error the host retries
    once, as any model-level error, and skips when the second start dies the same way."""


# A poll lists this process's descendants (psutil reads /proc: milliseconds). After an engine
# process is gone vLLM gets ENGINE_GRACE_S to raise its own error, then the rest of the engine is
# ended, then the start is interrupted: all within a minute, against a 30 min load-stall limit.
ENGINE_POLL_S, ENGINE_GRACE_S = 3.0, 15.0
_START_FAILED = "Engine core initialization failed"  # vLLM's own summary: the cause is elsewhere
_EXCEPTION_LINE = re.compile(r"\b[A-Za-z_][\w.]*(?:Error|Exception): \S")
_VLLM_DECORATION = re.compile(r"^(?:\(\S+ pid=\d+\)\s*)?(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) [\d-]+ [\d:.]+ "
                              r"\[[^]]*\]\s*)?")


class EngineWatch:
    """Around a vLLM engine's start (`with EngineWatch(): LLM(...)`): notices that the engine's
    processes died and ends the start within a minute, instead of waiting for the host's load-stall
    limit. Seen on 2 x H200 (BENCHMARKS.md, "Two GPUs"): both tensor-parallel workers died with a
    CUDA error, their engine core waited on them for ever, and so did the host.

    The engine's processes are this process's descendants that vLLM titled (`VLLM::EngineCore`,
    `VLLM::Worker_TP0`, ...; the prefix is vLLM's `VLLM_PROCESS_NAME_PREFIX`) and that appeared after
    the watch began (a closed engine's may still be exiting). vLLM keeps every one of them for the
    engine's life, so one that is gone while the start still runs means a dead engine. Then the
    watch gives vLLM `grace_s` to raise its own error, ends the engine's remaining processes (so
    that vLLM's own wait for its engine core sees the end and raises), and if the start has still
    not returned `grace_s` later, raises EngineDied in the starting thread (delivered when that
    thread next runs Python: vLLM's startup wait wakes every 10 s). `verdict` says what died, with
    the engine's last error line from this process's stdout/stderr files (a Ray worker's, which the
    engine's processes inherit) written since the watch began.

    It does not watch a running engine (vLLM reports a dead engine core itself once started), and it
    sees nothing where vLLM could not title its processes (no `setproctitle`): there the load-stall
    limit still ends a hung start, as before."""

    def __init__(self, poll_s: float | None = None, grace_s: float | None = None):
        self.poll_s = ENGINE_POLL_S if poll_s is None else poll_s
        self.grace_s = ENGINE_GRACE_S if grace_s is None else grace_s
        self.prefix = os.environ.get("VLLM_PROCESS_NAME_PREFIX", "VLLM") + "::"
        self.verdict: str | None = None  # set when the watch had to end the start
        self.engine_exited = False  # an engine process ended during the start (vLLM may have noticed first)
        self._seen: dict[tuple[int, float], tuple[object, str]] = {}
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._raised = False

    def __enter__(self) -> "EngineWatch":
        self._before = set(self._engine_processes())  # (pid, start time): a closed engine's, still exiting
        self._outputs = _output_files()
        self._starter = threading.get_ident()
        self._thread = threading.Thread(target=self._watch, name="yard-engine-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc_info) -> bool:
        with self._lock:
            self._stop.set()
            if self._raised:  # the start returned before the interruption arrived: take it back
                _raise_in_thread(self._starter, None)
        self._thread.join(timeout=5)
        if exc_type is not None and not self.engine_exited:
            alive = self._engine_processes()
            self.engine_exited = any(key not in alive for key in self._seen)
        return False

    def last_error_line(self, own: bool = False) -> str:
        """The engine's last error line written to this process's output since the watch began.
        `own`: only an exception line other than vLLM's summary of a failed start ("Engine core
        initialization failed"), else ""."""
        return _last_error_line(self._outputs, own=own)

    def _engine_processes(self) -> dict[tuple[int, float], tuple[object, str]]:
        """{(pid, start time): (process, its name without the prefix)} of the titled descendants."""
        try:
            import psutil

            children = psutil.Process(os.getpid()).children(recursive=True)
        except Exception:  # noqa: BLE001 - no psutil, or no /proc: nothing to watch
            return {}
        found = {}
        for proc in children:
            try:
                title = " ".join(proc.cmdline())
                if title.startswith(self.prefix) and proc.status() != psutil.STATUS_ZOMBIE:
                    found[(proc.pid, proc.create_time())] = (proc, title.removeprefix(self.prefix).split(" ")[0])
            except psutil.Error:
                continue
        return found

    def _watch(self) -> None:
        seen = self._seen
        gone_at = ended_at = None
        while not self._stop.wait(self.poll_s):
            alive = {k: v for k, v in self._engine_processes().items() if k not in self._before}
            seen.update(alive)
            gone = sorted(name for key, (_, name) in seen.items() if key not in alive)
            now = time.monotonic()
            if not gone:
                continue
            if gone_at is None:
                gone_at, self.engine_exited = now, True
                log.warning("vLLM engine process(es) %s gone while the engine starts", ", ".join(gone))
            elif ended_at is None and now - gone_at >= self.grace_s:
                line = self.last_error_line()
                self.verdict = f"{', '.join(gone)} exited; {line or 'no error line in its output'}"
                for proc, _ in seen.values():  # the rest of a dead engine: its core may wait on it for ever
                    try:
                        if proc.is_running():  # the same process (start time checked), not a reused pid
                            proc.kill()
                    except Exception:  # noqa: BLE001 - gone meanwhile
                        pass
                ended_at = now
            elif ended_at is not None and now - ended_at >= self.grace_s:
                with self._lock:
                    if not self._stop.is_set():
                        _raise_in_thread(self._starter, EngineDied)
                        self._raised = True
                return


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Raise `exc_type` in the thread `thread_id` when it next runs Python; None takes a pending one back."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc_type) if exc_type is not None else None)


def _output_files() -> list[tuple[str, int]]:
    """(path, size now) of the regular files this process's stdout and stderr write to (once each)."""
    files, seen = [], set()
    for fd in (1, 2):
        path = f"/proc/self/fd/{fd}"  # opens the file even when it was deleted (pytest's capture)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            files.append((path, st.st_size))
    return files


def _last_error_line(outputs: list[tuple[str, int]], max_bytes: int = 256 * 1024, own: bool = False) -> str:
    """The last `SomethingError: ...` line written to `outputs` since their recorded sizes (from the
    exception's name on: vLLM's `(Worker_TP0 pid=N)` and log headers dropped), else the last line
    (`own`: else "", and vLLM's summary of a failed start does not count)."""
    lines = []
    for path, since in outputs:
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(since, size - max_bytes))
                lines += f.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            continue
    for line in reversed(lines):
        match = _EXCEPTION_LINE.search(line)
        if match and not (own and _START_FAILED in line):
            return line[match.start():].strip()[:300]
    if own:
        return ""
    last = next((ln for ln in reversed(lines) if ln.strip()), "")
    return _VLLM_DECORATION.sub("", last.strip())[:300]


@dataclass
class VllmOutput:
    texts: list[str]  # in prompt order, special tokens skipped, stripped
    new_tokens: list[int]  # generated ids per prompt, up to and including the first EOS
    seconds: float  # the generate call alone


# config.json keys that name or date a checkpoint without changing its shape
_NAMING_KEYS = ("_name_or_path", "transformers_version", "name_or_path")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "tokenizer.model", "vocab.json", "merges.txt")


def engine_signature(path: str, **engine_args) -> str | None:
    """What must be equal for a started engine to take another checkpoint's weights in place:
    the architecture config (names aside), the generation config, the tokenizer files and the
    engine's own arguments. None when swapping is not safe: not a local folder, or quantized
    (its kernels repack weights at load)."""
    folder = Path(path)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return None
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("quantization_config") or cfg.get("compression_config"):
        return None
    for key in _NAMING_KEYS:
        cfg.pop(key, None)
    h = hashlib.sha256(json.dumps([cfg, engine_args], sort_keys=True, default=str).encode())
    for name in ("generation_config.json", *_TOKENIZER_FILES):
        f = folder / name
        h.update(name.encode() + (f.read_bytes() if f.is_file() else b"-"))
    return h.hexdigest()


class VllmModel:
    """One model in a vLLM `LLM`. Not thread-safe; one per process at a time. `swap` puts another
    checkpoint of the same architecture into the running engine (no new engine)."""

    engine = "vllm"  # what `actors.generation.generate_for` dispatches on

    def __init__(self, model_id: str, path: str, *, settings: VllmSettings, signature: str | None, dtype: str,
                 num_gpus: int = 1, revision: str | None = None, trust_remote_code: bool = False,
                 quantization: str | None = None):
        for name, value in VLLM_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        # a child process per engine unless the config says otherwise (VllmSettings.in_process)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if settings.in_process else "1"
        from vllm import LLM

        self.model_id, self.path, self.signature = model_id, path, signature
        self.version = vllm_version()
        kwargs = dict(model=path, tokenizer=path, dtype=dtype, revision=revision, trust_remote_code=trust_remote_code,
                      tensor_parallel_size=num_gpus, seed=settings.seed,
                      gpu_memory_utilization=settings.gpu_memory_utilization, max_model_len=settings.max_model_len,
                      max_num_seqs=settings.max_num_seqs, enforce_eager=settings.enforce_eager)
        if quantization:
            kwargs["quantization"] = quantization
        kwargs.update(settings.engine_kwargs)
        kwargs = tensor_parallel_args(kwargs, multicast=settings.multicast_all_reduce)
        watch = EngineWatch()
        try:
            with watch:
                self.llm = LLM(**kwargs)
        except Exception as exc:  # noqa: BLE001 - vLLM raises many kinds; the user needs its line
            if watch.verdict is not None:
                raise EngineDied(f"model {model_id}: vLLM {self.version} engine died while starting: "
                                 f"{watch.verdict}") from exc
            line = next((ln for ln in reversed(str(exc).strip().splitlines()) if ln.strip()), type(exc).__name__)
            if watch.engine_exited:  # vLLM saw its engine end ("see root cause above"): the cause is in its output
                own = watch.last_error_line(own=True)
                if not own:  # nothing of its own to say: ended from outside (a signal, the kernel's OOM killer)
                    raise EngineDied(f"model {model_id}: vLLM {self.version} engine died while starting: its "
                                     f"process ended with no error of its own (killed?); vLLM: {line}") from exc
                line = own
            raise EngineLoadFailed(f"model {model_id}: vLLM {self.version} cannot load {path}: {line}") from exc

    def generate(self, prompt_ids: list[list[int]], *, max_new_tokens: int, min_new_tokens: int = 0,
                 ignore_eos: bool = False, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None) -> VllmOutput:
        """Replies to token-id prompts, all in one call (vLLM batches them itself); greedy unless
        `temperature` > 0 (then `seed` makes a rerun repeat)."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=temperature, top_p=top_p, seed=seed if temperature > 0 else None,
                                max_tokens=max_new_tokens, min_tokens=min_new_tokens, ignore_eos=ignore_eos,
                                skip_special_tokens=True)
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        # This process runs vLLM's offline front-end (scheduling calls, detokenizing every step), and
        # vLLM freezes the heap of its engine core and of its online server but not this one
        # (vllm-project/vllm#48229, #48675): each full collection walks everything the process ever
        # loaded. Three identical evaluations in one reused sweep-trial process took 2.1, 2.6 and
        # 3.0 s on an H100. Off while vLLM generates; reference counting still frees what it drops.
        with gc_paused():
            started = time.perf_counter()
            outs = self.llm.generate(prompts, params, use_tqdm=False)
            seconds = time.perf_counter() - started
        texts, counts = [], []
        for out in outs:
            best = out.outputs[0]
            texts.append(best.text.strip())
            counts.append(len(best.token_ids))  # vLLM stops at EOS and keeps it: up to and including
        return VllmOutput(texts, counts, round(seconds, 4))

    def swap(self, model_id: str, path: str) -> None:
        """Load `path`'s weights into the running engine in place (same shapes, so the compiled
        graphs and CUDA graphs stay valid) and drop every cached prefix of the previous model.
        The caller checks `engine_signature` first."""
        self.llm.reset_prefix_cache()  # KV of the previous weights must never serve a prompt again
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        self.model_id, self.path = model_id, path

    def close(self) -> None:
        """Shut the engine down and give its GPU memory back."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        try:
            engine.engine_core.shutdown()
        except Exception as exc:  # noqa: BLE001 - best effort; the cleanup below still runs
            log.debug("vLLM engine shutdown: %s", exc)
        # in-process: drop the bytecode hooks that pin the compiled model (and its CUDA graphs)
        # now, not whenever the engine object happens to be collected
        finalizer = getattr(engine, "_finalizer", None)
        if finalizer is not None:
            finalizer()
        del llm, engine
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        except Exception as exc:  # noqa: BLE001
            log.debug("vLLM cleanup: %s", exc)
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_vllm(model_id: str, registry: ModelRegistry, settings: VllmSettings, node: NodeFacts | None = None,
              reuse: VllmModel | None = None):
    """Decide (as the HF path does), resolve the source, load into vLLM: (model, tokenizer, plan,
    reused). With `reuse` (a running engine) and the same `engine_signature`, the weights are
    swapped into it; otherwise `reuse` is closed first and a new engine starts. A model refused
    before `reuse` is touched (a LoadError, a broken checkpoint, its tokenizer) leaves `reuse`
    running, for the caller to keep; a failed swap closes it (its weights are in no known state)."""
    spec = registry.get(model_id)
    plan = decide_load(model_id, spec, node or node_facts())
    if plan.device_map is None:
        raise LoadError(f"model {model_id}: the vllm engine needs a CUDA GPU; this node has none")
    path = resolve_source(plan)
    check_checkpoint(model_id, path)  # a broken copy fails in a second, and `reuse` stays warm
    tokenizer = load_tokenizer(plan, path)
    args = dict(dtype=plan.dtype, num_gpus=spec.num_gpus, revision=plan.revision,
                trust_remote_code=plan.trust_remote_code,
                quantization="bitsandbytes" if plan.quantization in ("8bit", "4bit") else None)
    signature = engine_signature(path, settings=settings.model_dump(), **args)
    if reuse is not None:
        if signature is not None and signature == reuse.signature:
            try:
                reuse.swap(model_id, path)
            except BaseException:
                reuse.close()
                raise
            return reuse, tokenizer, plan, True
        reuse.close()
    return VllmModel(model_id, path, settings=settings, signature=signature, **args), tokenizer, plan, False


def load_vllm_dir(model_id: str, path: str, settings: VllmSettings, *, num_gpus: int = 1) -> VllmModel:
    """A saved model folder in vLLM as it is (a sweep candidate exactly as packaged: plain
    safetensors or compressed-tensors, whose quantization vLLM reads from its config.json).
    EngineLoadFailed with vLLM's own last line when vLLM cannot load it."""
    return VllmModel(model_id, str(path), settings=settings, signature=None, dtype="auto", num_gpus=num_gpus)
