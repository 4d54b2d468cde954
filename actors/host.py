"""The warm model host: start once (imports, CUDA, encoder), then fingerprint model after model.

`ModelHost` is a plain class; `actors.dna_job` schedules it as a Ray actor with the GPUs it needs,
benchmarks and tests use it in-process. For each model it runs the phases

    loading -> gate -> generating -> validating -> embedding -> unloading

and writes one store run `dna/<model>/<run>/`: `responses.json` (llm-dna's schema) whenever
generation ran, `outcome.json` always, and when every gate passed `dna.npy`, `dna.json` (vector,
provenance, signature), `dna_signature.json` (llm-dna's own layout) and `timings.json`, completed
"ok". A failed model's run is completed "failed": its files are kept for the post-mortem,
`store.latest()` never returns it.

Model-level problems never raise: a LoadError, a GateFailure or any exception from the model
becomes status "failed" (deterministic: bad id, missing path, no chat template, a gate) or
"error" (anything else, with an `error_signature` the job's retry logic compares). Only the
process dying is the job's business.

Progress (`yard status`): task = host id, item = model id, phase as above, plus "starting"
(imports, CUDA, encoder) and "idle" (between models; a day's stall limit). The total counts
prompts: `run_queue` sets it for its whole queue up front; a lone `run_model` call adds its own
prompts; a model that fails early takes its remaining prompts off the total.

    >>> host = ModelHost("host-0", DnaConfig().model_dump(), [zoo.registry_path], ".yard", None, None)  # doctest: +SKIP
    >>> host.run_queue([(m, probes.probes, probes.probe_set_id, probes.sha256) for m in models])     # doctest: +SKIP
    >>> host.host_report()["encoder_load_s"]                                                       # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
import time
import traceback
import weakref

from actors.config import DnaConfig
from actors.gates import GateFailure, Watchdog, sanity_gate, validate_responses
from cluster.config import ConfigError
from cluster.models.loading import LoadError
from cluster.ops.progress import one_line
from cluster.store.storage import StoreError

log = logging.getLogger(__name__)

# Between models the host waits for work: it cannot hang there, so "idle" gets a day, not
# stall_after_s (a host done with its queue waits while the others finish).
IDLE_STALL_AFTER_S = 86400.0
SANITY_MAX_NEW_TOKENS = 50  # the playbook's one-prompt check
# After unload, CUDA memory may exceed the pre-load baseline by at most this much.
MEMORY_TOLERANCE_BYTES = 32 * 2**20
# Deterministic model-level problems: retrying cannot help, so they are "failed", not "error".
FAILED_TYPES = (LoadError, ConfigError, GateFailure)


def _since(t0: float) -> float:
    return round(time.perf_counter() - t0, 4)


class ModelHost:
    """A warm host: pays imports, CUDA init and the encoder load once, then runs models one
    after another. See the module docstring for phases, artifacts and statuses."""

    def __init__(self, host_id: str, cfg: dict, registry_paths: list[str], store_uri: str,
                 endpoint_url: str | None = None, job_id: str | None = None):
        t_start = time.perf_counter()
        self.init_at = time.time()  # the job's clock: how long Ray took to give this host a process
        self.host_id = host_id
        self.cfg = DnaConfig.model_validate(cfg)
        if self.cfg.hosts.hf_cache:
            # before transformers is imported: huggingface_hub reads HF_HOME once, at import
            cache = os.path.expanduser(self.cfg.hosts.hf_cache)
            os.environ["HF_HOME"] = os.environ["YARD_HF_CACHE"] = cache
        from cluster.store.storage import open_store

        self.store = open_store(store_uri, endpoint_url)
        self.reporter = None
        if job_id is not None:
            from cluster.ops.progress import ProgressReporter

            # first, so that `yard status` shows the host while it starts (an encoder download
            # or a cold import can take minutes)
            self.reporter = ProgressReporter(self.store, job_id, task=host_id,
                                             stall_after_s=self.cfg.hosts.stall_after_s)
            self.reporter.phase("starting", stall_after_s=self.cfg.hosts.load_stall_after_s)

        t0 = time.perf_counter()
        import torch
        import transformers  # noqa: F401

        from cluster.models.loading import import_sentence_transformers

        import_sentence_transformers()  # paid once per host, not per model

        imports_s = _since(t0)

        t0 = time.perf_counter()
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.init()
            torch.zeros(1, device="cuda")  # creates the context: the first allocation pays for it
            torch.cuda.synchronize()
        cuda_init_s = _since(t0) if self.cuda else 0.0
        if not self.cuda:
            # A CPU host computes on the cores it was given: more torch threads than cores makes
            # OpenMP threads spin against each other (100x slower generation on a busy node).
            torch.set_num_threads(max(1, int(self.cfg.hosts.cpus_per_host)))

        from actors.fingerprint import load_encoder, make_extractor
        from cluster.models.registry import ModelRegistry
        from cluster.node import node_facts

        t0 = time.perf_counter()
        device = self.cfg.encoder.device
        self.device = ("cuda" if self.cuda else "cpu") if device == "auto" else device
        self.encoder = load_encoder(self.cfg.encoder, self.device)
        self.encoder_name = self.cfg.encoder.name
        self.extractor = make_extractor(self.cfg.dna, self.encoder_name)
        if self.cuda:
            # cuBLAS/cuBLASLt workspaces are allocated on first use and then kept: create them
            # now, so they are part of every model's memory baseline rather than a false leak.
            self.encoder.encode(["warm up"])
            for dtype in (torch.float32, torch.bfloat16):
                ones = torch.ones(64, 64, device="cuda", dtype=dtype)
                torch.matmul(ones, ones)
            del ones
            torch.cuda.synchronize()
        encoder_load_s = _since(t0)

        self.registry = ModelRegistry.load(registry_paths)
        self.node = node_facts()
        from cluster.engines.engine import check_engine, engine_version

        self.engine = self.cfg.engine.name
        check_engine(self.cfg.engine, "engine", gpus=torch.cuda.device_count() if self.cuda else 0)
        self.engine_version = engine_version(self.engine)
        self._engine = None  # a vLLM engine kept after its model, for the next one to reuse
        if self.engine == "vllm":
            t0 = time.perf_counter()
            import vllm  # noqa: F401  (~20 s: paid once per host, like torch's)

            imports_s = round(imports_s + _since(t0), 4)
        self._pristine = self._device_used()  # GPU bytes in use with no model loaded
        self._in_queue = False
        self.models: list[dict] = []  # per-model {model_id, status, **timings}
        self.memory_leaks: list[dict] = []
        # start_s: the rest of the host start (config, store, reporter, registry, node facts),
        # disjoint from the other three so that they add up to the whole start.
        total_s = _since(t_start)
        self.start = {
            "start_s": round(max(total_s - imports_s - cuda_init_s - encoder_load_s, 0.0), 4),
            "imports_s": imports_s,
            "cuda_init_s": cuda_init_s,
            "encoder_load_s": encoder_load_s,
            "host_start_total_s": total_s,
        }
        log.info("host %s ready on %s (%s) in %.1fs: imports %.1fs, CUDA %.1fs, encoder %.1fs", host_id,
                 self.node.hostname, self.device, total_s, imports_s, cuda_init_s, encoder_load_s)
        if self.reporter is not None:
            self.reporter.heartbeat(host_start=self.start, device=self.device)
            self.reporter.phase("idle", stall_after_s=IDLE_STALL_AFTER_S)

    # --- public -------------------------------------------------------------------------------
    def run_queue(self, items: list[tuple[str, list, str, str]]) -> list[dict]:
        """Run (model_id, probes, probe_set_id, probe_sha256) items one after another, warm."""
        self._expect(sum(len(item[1]) for item in items))
        self._in_queue = True
        try:
            return [self.run_model(*item) for item in items]
        finally:
            self._in_queue = False

    def run_model(self, model_id: str, probes: list[str], probe_set_id: str, probe_sha256: str,
                  reuse_key: dict | None = None) -> dict:
        """Fingerprint one model; returns its outcome (never raises for model-level problems).
        `reuse_key` (`actors.dna_reuse`) goes into the run's marker, for a later rerun to match."""
        if not self._in_queue:
            self._expect(len(probes))
        t_model = time.perf_counter()
        gen = self.cfg.generation
        timings = {"load_s": 0.0, "gate_s": 0.0, "generate_s": 0.0, "embed_s": 0.0, "unload_s": 0.0}
        out = {"model_id": model_id, "host_id": self.host_id, "status": "ok", "gate": None, "reason": "",
               "error_signature": None, "phase": None, "stats": None, "timings": timings, "memory": {},
               "artifact": None,
               # the host's start, reported with its first model (the job's cost ledger shares it out)
               "host_start_s": 0.0 if self.models else self.start["host_start_total_s"],
               "host_init_at": None if self.models else self.init_at}
        try:
            run = self.store.new_run("dna", model_id)
        except StoreError as exc:  # an id no storage key can hold: nothing to load, nothing to keep
            out.update(status="failed", reason=f"model {model_id!r}: {exc}", error_signature=one_line(exc))
            self.models.append({"model_id": model_id, "status": "failed", **timings})
            return out
        out["artifact"] = run.prefix
        baseline = self._allocated()
        device_before = self._device_used()
        vector = signature = provenance = None
        advanced = 0
        ref = model = None
        out["engine"] = self.engine_version
        try:
            from actors.fingerprint import (ProbeSet, fingerprint, llm_dna_generation_config, make_provenance,
                                            probes_sha256, responses_payload)
            from actors.generation import render_prompts

            if probes_sha256(probes) != probe_sha256:
                raise ValueError(f"model {model_id}: probe set {probe_set_id}: sha256 {probe_sha256[:12]}... "
                                 f"does not match its {len(probes)} probes")
            spec = self.registry.get(model_id)

            self._phase("loading", model_id, out, stall_after_s=self.cfg.hosts.load_stall_after_s)
            t0 = time.perf_counter()
            model, tokenizer, plan, generate = self._load(model_id, out)
            ref = weakref.ref(model)
            timings["load_s"] = _since(t0)
            if "engine_reused" in out:  # vLLM: a swap or a new engine (a later plan prices its siblings by it)
                timings["engine_reused"] = out["engine_reused"]
            out["plan"] = {"dtype": plan.dtype, "device_map": plan.device_map, "quantization": plan.quantization}

            self._phase("gate", model_id, out)
            t0 = time.perf_counter()
            # the extraction's own decoding, at most 50 tokens: what generation would give, early
            sanity_new = min(SANITY_MAX_NEW_TOKENS, gen.max_new_tokens)
            sanity_gen = gen.model_copy(update={"do_sample": False, "batch_size": 1, "max_new_tokens": sanity_new,
                                                "min_new_tokens": min(gen.min_new_tokens, sanity_new)})
            sanity_text = render_prompts(tokenizer, [self.cfg.gates.sanity_prompt], spec, model_id, gen.use_chat_template)
            reply = generate(model, tokenizer, sanity_text, sanity_gen,
                             add_special_tokens=not gen.use_chat_template).responses[0]
            timings["gate_s"] = _since(t0)
            out["sanity_reply"] = reply[:200]
            sanity_gate(model_id, reply, self.cfg.gates.sanity_min_chars)

            self._phase("generating", model_id, out)
            texts = render_prompts(tokenizer, probes, spec, model_id, gen.use_chat_template)
            watchdog = Watchdog(model_id, spec.params_b, self.cfg.gates)

            def on_batch(done: int, total: int, seconds: float) -> None:
                nonlocal advanced
                if self.reporter is not None:
                    self.reporter.advance(done - advanced, item=model_id)
                advanced = done
                watchdog.check(done, seconds)

            t0 = time.perf_counter()
            try:
                result = generate(model, tokenizer, texts, gen, on_batch=on_batch,
                                  add_special_tokens=not gen.use_chat_template)
            finally:
                timings["generate_s"] = _since(t0)
            timings["prompts"] = len(probes)
            timings["new_tokens"] = sum(result.new_tokens)
            # generated tokens over the generate call (prompt reading included, as users time it)
            timings["tokens_per_s"] = round(timings["new_tokens"] / max(timings["generate_s"], 1e-9), 1)
            timings["sec_per_prompt"] = round(timings["generate_s"] / max(len(probes), 1), 4)
            run.put_json("responses.json", responses_payload(model_id, probe_set_id, probes, result.responses,
                                                             llm_dna_generation_config(gen), gen.model_dump()))

            self._phase("validating", model_id, out)
            stats = validate_responses(model_id, result.responses, self.cfg.gates)
            out["stats"] = stats.to_dict()  # kept for the report, also when the gate fails
            out["new_tokens_avg"] = round(sum(result.new_tokens) / max(len(result.new_tokens), 1), 1)
            if not stats.ok:
                raise GateFailure("validation", stats.reason)

            self._phase("embedding", model_id, out)
            t0 = time.perf_counter()
            probe_set = ProbeSet(list(probes), probe_set_id, probe_sha256, source=f"host {self.host_id}")
            provenance = make_provenance(self.cfg, probe_sha256, self.encoder_name)
            vector, signature = fingerprint(result.responses, probe_set, self.extractor, self.encoder,
                                            model_id=model_id, provenance=provenance)
            timings["embed_s"] = _since(t0)
            out["phase"] = "done"
        except FAILED_TYPES as exc:
            out.update(status="failed", gate=getattr(exc, "gate", None), reason=self._reason(model_id, exc, out),
                       error_signature=one_line(exc))
            traceback.clear_frames(exc.__traceback__)
        except Exception as exc:  # noqa: BLE001 - any model-level error becomes an outcome
            out.update(status="error", reason=self._reason(model_id, exc, out), error_signature=one_line(exc))
            # the traceback as text: a log record holding exc_info would keep the model alive
            log.error("%s\n%s", out["reason"], traceback.format_exc())
            traceback.clear_frames(exc.__traceback__)
        # An exception's traceback holds the frames that hold the model: their locals are cleared
        # above, and the unload runs outside the except blocks, once the exception is gone.
        keep = (self.engine == "vllm" and model is not None and out["status"] != "error"
                and self.cfg.engine.vllm.reuse_engine)
        if self.engine == "vllm" and model is not None:
            if keep:
                self._engine = model  # the next model may swap its weights in
            else:
                model.close()  # the engine's memory goes back before the check below
        # a model that failed before its load touched the warm engine leaves that engine running
        keep = keep or (model is None and self._engine is not None)
        model = tokenizer = result = generate = None  # noqa: F841
        if keep:
            timings["unload_s"] = 0.0
            out["memory"] = {"device": "cuda", "engine_kept": True, "returned": None,
                             "device_used_bytes": self._device_used()}
        else:
            self._unload(model_id, out, timings, baseline, ref,
                         self._pristine if self.engine == "vllm" else device_before)
        timings["total_s"] = _since(t_model)
        timings.setdefault("prompts", len(probes))
        timings.setdefault("sec_per_prompt", None)
        if out["status"] != "ok" and self.reporter is not None and advanced < len(probes):
            # prompts this model will never run leave the total, so the host's ETA stays true
            self.reporter.set_total(max((self.reporter.total or 0) - (len(probes) - advanced), self.reporter.done))

        self._finish_run(run, out, vector, provenance, signature, reuse_key)
        self.models.append({"model_id": model_id, "status": out["status"], **timings})
        log.info("model %s: %s in %.1fs%s", model_id, out["status"], timings["total_s"],
                 f" ({out['reason']})" if out["reason"] else "")
        if self.reporter is not None:
            self.reporter.heartbeat(last_model={"model_id": model_id, "status": out["status"], **timings})
            self.reporter.phase("idle", stall_after_s=IDLE_STALL_AFTER_S)
        return out

    def host_report(self) -> dict:
        """Host start timings (start_s, imports_s, cuda_init_s, encoder_load_s: disjoint parts
        of host_start_total_s) and each model's timings so far."""
        return {"host_id": self.host_id, "node": self.node.hostname, "device": self.device,
                "engine": self.engine_version, **self.start,
                "models": [dict(m) for m in self.models], "memory_leaks": list(self.memory_leaks)}

    def close(self, status: str = "succeeded", message: str = "") -> None:
        """Release a kept vLLM engine and finish the progress record (the host stays usable)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if self.reporter is not None:
            ok = sum(1 for m in self.models if m["status"] == "ok")
            self.reporter.finish(status, message or f"{ok}/{len(self.models)} models ok")

    # --- internals ------------------------------------------------------------------------------
    def _load(self, model_id: str, out: dict):
        """(model, tokenizer, plan, generate function) on the configured engine. vLLM: the kept
        engine takes the model's weights when its signature matches; otherwise it is closed first."""
        if self.engine == "vllm":
            from actors.generation import generate_vllm
            from cluster.engines.engine_vllm import load_vllm

            reuse, self._engine = self._engine, None
            try:
                model, tokenizer, plan, reused = load_vllm(model_id, self.registry, self.cfg.engine.vllm, self.node,
                                                           reuse=reuse)
            except BaseException:
                if reuse is not None and reuse.llm is not None:
                    # refused before the engine was touched (a broken checkpoint): it stays warm for the
                    # next model (load_vllm closes an engine whose swap failed)
                    self._engine = reuse
                raise
            out["engine_reused"] = reused
            return model, tokenizer, plan, generate_vllm
        from actors.generation import generate_batched
        from cluster.models.loading import load_model

        model, tokenizer, plan = load_model(model_id, self.registry, self.node)
        return model, tokenizer, plan, generate_batched

    def _expect(self, prompts: int) -> None:
        if self.reporter is not None:
            self.reporter.set_total(max(self.reporter.total or 0, self.reporter.done) + prompts)

    def _phase(self, name: str, model_id: str, out: dict | None, stall_after_s: float | None = None) -> None:
        if out is not None:
            out["phase"] = name  # where a failure happened; "done" once the model passed every phase
        if self.reporter is not None:
            self.reporter.phase(name, item=model_id, stall_after_s=stall_after_s)

    @staticmethod
    def _reason(model_id: str, exc: BaseException, out: dict) -> str:
        """One line naming the model: a LoadError/GateFailure already does; others get the phase."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if isinstance(exc, FAILED_TYPES) and (f"model {model_id}" in text or f"model {model_id!r}" in text):
            return text
        return f"model {model_id}: {out['phase'] or 'setup'}: {one_line(exc)}"

    @staticmethod
    def _finish_run(run, out: dict, vector, provenance: dict | None, signature: dict | None,
                    reuse_key: dict | None = None) -> None:
        """Publish the DNA when every gate passed; otherwise keep the files under a failed run. The
        marker carries the error signature and the reuse key: what a rerun decides by."""
        from actors.fingerprint import write_dna

        if out["status"] == "ok":
            write_dna(run, out["model_id"], vector, provenance, signature)
            run.put_json("timings.json", out["timings"])
        run.put_json("outcome.json", out)
        keyed = {} if reuse_key is None else {"reuse_key": reuse_key}
        run.complete(status="ok" if out["status"] == "ok" else "failed", model_id=out["model_id"],
                     outcome=out["status"], gate=out["gate"], reason=out["reason"],
                     error_signature=out["error_signature"], **keyed)

    def _allocated(self) -> int:
        if not self.cuda:
            return 0
        import torch

        torch.cuda.synchronize()
        # every visible GPU: a device_map="auto" model spreads over several
        return sum(int(torch.cuda.memory_allocated(i)) for i in range(torch.cuda.device_count()))

    def _device_used(self) -> int:
        """Bytes in use on every visible GPU, by anyone (cudaMemGetInfo): what an engine allocating
        outside torch's allocator (NCCL, CUDA graphs' pools) leaves behind shows here."""
        if not self.cuda:
            return 0
        import torch

        return sum(total - free for free, total in (torch.cuda.mem_get_info(i) for i in range(torch.cuda.device_count())))

    def _unload(self, model_id: str, out: dict, timings: dict, baseline: int, ref, device_before: int = 0) -> None:
        from cluster.models.loading import release_memory

        self._phase("unloading", model_id, None)
        t0 = time.perf_counter()
        release_memory()
        after = self._allocated()
        timings["unload_s"] = _since(t0)
        collected = ref is None or ref() is None
        memory = {"device": "cuda" if self.cuda else "cpu", "baseline_bytes": baseline, "after_unload_bytes": after,
                  "model_collected": collected}
        if self.cuda:
            memory.update(device_used_before_bytes=device_before, device_used_after_bytes=self._device_used())
        memory["returned"] = collected and after - baseline <= MEMORY_TOLERANCE_BYTES
        if self.cuda and self.engine == "vllm":
            # vLLM's engine lives in a child process by default: the device's own count is the one to trust
            memory["returned"] = memory["returned"] and (
                memory["device_used_after_bytes"] - device_before <= MEMORY_TOLERANCE_BYTES)
        out["memory"] = memory
        if not memory["returned"]:
            # The DNA is still good; the host is not: the job should replace it before the next model.
            log.error("host %s: memory not returned after %s: %d -> %d bytes allocated, model collected: %s",
                      self.host_id, model_id, baseline, after, collected)
            self.memory_leaks.append({"model_id": model_id, **memory})
