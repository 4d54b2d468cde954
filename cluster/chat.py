"""`yard chat`: every model loads on a Ray actor and answers a chat prompt (`yard demo` runs it first).

The chat job is the foundation's smoke test of the whole path a real job takes: registry ->
explicit load decision -> Ray actor -> generation -> store -> progress -> report. Each model is a
ledger row (`record_models`) and the report ends with the job's cost line.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from cluster.config import JobConfig, job_config, job_parser
from cluster.ops.jobs import REPO_ROOT, run_job
from cluster.store.storage import ArtifactStore, open_store

log = logging.getLogger(__name__)
DEFAULT_CHAT_CONFIG = REPO_ROOT / "configs" / "chat.demo.yaml"


class ChatJobConfig(JobConfig):
    kind: Literal["chat"] = "chat"
    registry: list[str] = Field(default_factory=list, description="extra registry files")
    models: list[str] | None = Field(None, description="model ids; default: every model of the registry")
    prompt: str = "Tell me about the weather today."
    max_new_tokens: int = Field(80, ge=1, le=4096)
    workers: int = Field(1, ge=1, description="Ray actors; models are dealt round-robin")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    stall_after_s: float = Field(300.0, gt=0)


class ChatWorker:
    """Plain class, scheduled as a Ray actor: loads each model in turn, answers, unloads."""

    def __init__(self, registry_paths: list[str], store_uri: str, endpoint_url: str | None, job_id: str, task: str):
        t0 = time.perf_counter()
        import torch  # noqa: F401  (paid once per actor, not per model)
        import transformers  # noqa: F401

        from cluster.models.registry import ModelRegistry
        from cluster.node import node_facts
        from cluster.ops.progress import ProgressReporter

        self.registry = ModelRegistry.load(registry_paths)
        self.node = node_facts()
        self.store = open_store(store_uri, endpoint_url)
        self.reporter = ProgressReporter(self.store, job_id, task=task)
        self.start_s = time.perf_counter() - t0  # the actor's imports and setup: shared by its models

    def answer_all(self, model_ids: list[str], prompt: str, max_new_tokens: int) -> list[dict]:
        self.reporter.set_total(len(model_ids))
        results = []
        for mid in model_ids:
            results.append(self.answer(mid, prompt, max_new_tokens))
            results[-1]["start_s"] = round(self.start_s / len(model_ids), 3)
            self.reporter.advance(item=mid)
        self.reporter.finish("succeeded" if all(r["status"] == "ok" for r in results) else "failed")
        return results

    def answer(self, model_id: str, prompt: str, max_new_tokens: int) -> dict:
        import torch

        from cluster.models.loading import chat_prompt, load_model, release_memory

        out = {"model_id": model_id, "status": "failed", "node": self.node.hostname}
        t_answer = time.perf_counter()
        try:
            self.reporter.phase("loading", item=model_id)
            t0 = time.perf_counter()
            model, tok, plan = load_model(model_id, self.registry, self.node)
            out["plan"] = plan.to_dict()
            out["load_s"] = round(time.perf_counter() - t0, 3)
            self.reporter.phase("generating", item=model_id)
            text = chat_prompt(tok, [{"role": "user", "content": prompt}], self.registry.get(model_id), model_id)
            inputs = tok(text, return_tensors="pt", add_special_tokens=False).to(model.device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            new_tokens = gen[0, inputs["input_ids"].shape[1]:]
            out["gen_s"] = round(time.perf_counter() - t0, 3)
            out["tokens"] = int(new_tokens.numel())
            out["reply"] = tok.decode(new_tokens, skip_special_tokens=True).strip()
            out["status"] = "ok"
            del model, gen, inputs
            release_memory()
        except Exception as exc:  # one model's failure never stops the others
            out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.error("model %s failed: %s", model_id, out["error"])
        out["wall_s"] = round(time.perf_counter() - t_answer, 3)  # a failure's time, too, was held
        run = self.store.new_run("chat", model_id)
        run.put_json("reply.json", out)
        run.complete(status=out["status"] if out["status"] == "ok" else "failed")
        out["artifact"] = run.prefix
        return out


def run_chat(cfg: ChatJobConfig, config_path: str | None = None) -> tuple[int, dict]:
    """The chat job; returns (exit code, summary with the report location)."""
    import ray

    from cluster.capacity.cost_report import job_cost_line
    from cluster.capacity.prices import job_prices
    from cluster.models.registry import ModelRegistry
    from cluster.runtime import connect

    store = open_store(cfg.storage.uri, cfg.storage.endpoint_url)

    registry_paths = cfg.registry_paths()
    registry = ModelRegistry.load(registry_paths)
    model_ids = cfg.models or registry.ids()
    for mid in model_ids:
        registry.get(mid)  # unknown ids fail now, with the list of known ones
    prices = job_prices(cfg)  # a bad price table fails here too, before Ray
    with run_job("chat", cfg, store, config_path=config_path, stall_after_s=cfg.stall_after_s) as job:
        connect(cfg.ray)
        n = min(cfg.workers, len(model_ids))
        Worker = ray.remote(num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker)(ChatWorker)
        shares = [model_ids[i::n] for i in range(n)]
        actors = [
            Worker.remote(registry_paths, cfg.storage.uri, cfg.storage.endpoint_url, job.job_id, f"worker-{i}")
            for i in range(n)
        ]
        t_submit = time.perf_counter()
        futures = [a.answer_all.remote(share, cfg.prompt, cfg.max_new_tokens) for a, share in zip(actors, shares)]
        results: list[dict] = []
        for share, fut in zip(shares, futures):
            try:
                results.extend(ray.get(fut))
            except ray.exceptions.RayError as exc:  # the worker died: its models failed, the rest stand
                reason = f"worker died: {str(exc).splitlines()[0]}"
                waited = round((time.perf_counter() - t_submit) / len(share), 3)
                results.extend({"model_id": m, "status": "failed", "error": reason, "wall_s": waited} for m in share)
        for a in actors:
            ray.kill(a)
        record_models(job, cfg, results)
        report = write_chat_report(store, registry, results, cfg, cost_line=job_cost_line(job, prices))
        job.add_artifact(report)
        failed = [r for r in results if r["status"] != "ok"]
        job.summary = {"models": len(results), "failed": len(failed), "report": report}
        print_chat_table(results, registry)
        if failed:
            job.fail(f"{len(failed)} of {len(results)} model(s) failed: " + ", ".join(r["model_id"] for r in failed))
    return (1 if failed else 0), {"status": "failed" if failed else "ok", "report": report}


def record_models(job, cfg: ChatJobConfig, results: list[dict]) -> None:
    """A ledger row per model on its worker's resources: its share of the worker's start, its load
    and the rest of its answer (template, generation) as the worker timed them; ok -> kept, else
    failed. A model whose worker died has only the time the driver waited, booked as "generate"."""
    from cluster.capacity.ledger import unit_resources

    res = unit_resources(cfg.gpus_per_worker, cfg.cpus_per_worker)
    for r in results:
        wall = float(r.get("wall_s") or 0.0)
        if "load_s" in r:
            phases = {"load": r["load_s"], "generate": max(wall - r["load_s"], r.get("gen_s", 0.0))}
        elif "node" in r:  # the worker answered without a load time: the load itself failed
            phases = {"load": wall}
        else:
            phases = {"generate": wall}
        job.ledger.add(unit=r["model_id"], phases={"start": r.get("start_s", 0.0), **phases},
                       outcome="kept" if r["status"] == "ok" else "failed", where=r.get("node", ""),
                       reason=r.get("error", ""), **res)


def print_chat_table(results: list[dict], registry) -> None:
    from cluster.console import console
    from rich.table import Table

    table = Table(title="chat: one prompt per model")
    for col in ("model", "arch", "parent", "status", "load s", "gen s", "chars", "reply"):
        table.add_column(col, overflow="fold")
    for r in results:
        spec = registry.models.get(r["model_id"])
        reply = r.get("reply") or r.get("error", "")
        table.add_row(
            r["model_id"], spec.family if spec else "?", (spec.parent or "-") if spec else "?", r["status"],
            str(r.get("load_s", "-")), str(r.get("gen_s", "-")), str(len(r.get("reply", ""))),
            (reply[:70] + "...") if len(reply) > 70 else reply,
        )
    console().print(table)


def write_chat_report(store: ArtifactStore, registry, results: list[dict], cfg: ChatJobConfig,
                      cost_line: str = "") -> str:
    """report.md, results.json and timings.png in `reports/chat/<run>/`; returns the report's location.
    The report ends with `cost_line` (the job's ledger priced) when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tempfile

    run = store.new_run("reports", "chat")
    run.put_json("results.json", results)
    lines = [
        "# Chat smoke test", "", f"Prompt: {cfg.prompt!r}, greedy, max_new_tokens={cfg.max_new_tokens}.", "",
        "| model | architecture | parent | derivation | status | load s | gen s | tokens | reply |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        spec = registry.models.get(r["model_id"])
        reply = (r.get("reply") or r.get("error", "")).replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {r['model_id']} | {spec.family if spec else '?'} | {(spec.parent or '-') if spec else '?'} | "
            f"{spec.derivation if spec else '?'} | {r['status']} | {r.get('load_s', '-')} | {r.get('gen_s', '-')} | "
            f"{r.get('tokens', '-')} | {reply[:120]} |"
        )
    ok = [r for r in results if r["status"] == "ok"]
    lines += ["", f"{len(ok)} of {len(results)} models answered."]
    with tempfile.TemporaryDirectory() as tmp:
        fig, ax = plt.subplots(figsize=(max(4, len(ok) * 0.9), 3))
        names = [r["model_id"] for r in ok]
        ax.bar(names, [r["load_s"] for r in ok], label="load")
        ax.bar(names, [r["gen_s"] for r in ok], bottom=[r["load_s"] for r in ok], label="generate")
        ax.set_ylabel("seconds")
        ax.tick_params(axis="x", rotation=45)
        ax.legend()
        fig.tight_layout()
        png = Path(tmp) / "timings.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        run.put_file("timings.png", png)
    lines += ["", "![timings](timings.png)"] + (["", cost_line] if cost_line else [])
    key = run.put_bytes("report.md", "\n".join(lines).encode())
    run.complete()
    return store.locate(key)


def chat_main(argv: list[str]) -> int:
    args = job_parser("yard chat", "every model answers one chat prompt on Ray", DEFAULT_CHAT_CONFIG
                      ).parse_intermixed_args(argv)
    cfg = job_config(args, ChatJobConfig)
    code, summary = run_chat(cfg, args.config)
    print(f"report: {summary['report']}")
    return code
