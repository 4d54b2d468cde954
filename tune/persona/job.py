"""`yard persona CONFIG [--plan] [k=v ...]`: persona fine-tuning as one cluster job.

    yard persona configs/persona.demo.yaml --plan     # prep + steps + wallclock/cost table, no training
    yard persona configs/persona.demo.yaml            # prep -> SFT -> DPO -> merge -> lineage -> probe

Order of work (seed 001's recipe as a job):
1. prep on the driver (tune/persona/data.py): validate, dedupe, strip system prompts, token
   lengths. Zero valid SFT rows is refused here, before Ray starts.
2. SFT as a Ray task with the resources of `resources.sft` (a GPU on a cluster), then DPO as its own
   task starting from the SFT adapter, then the merge (+ GGUF) task. Stages hand adapters to each
   other through the artifact store, so a stage may land on any node.
3. The merged model joins the zoo's lineage as a child of its base (a zoo base, a local store).
4. The probe suite runs on the merged model behind the Serve app, with and without the persona's
   system prompt (tune/persona/probe.py: the sweep's trials run the same step in-process).
Outputs: store run `persona/<name>/<run>/` with prep_report.md, lengths.png, sft/adapter/,
dpo/adapter/, model/ (merged), gguf/ (optional), losses.png, report.md, summary.json.

Exit codes: 0 done and every probe answered; 1 the job finished with a failure (a stage crashed,
a probe or judgment failed); 2 bad input (config, data, unknown base), printed as one line.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from cluster.config import ConfigError, UserError, job_config, job_parser, load_config, naming_source
from cluster.models.registry import ModelRegistry
from cluster.models.zoo import zoo_dir_of
from cluster.ops.jobs import REPO_ROOT, run_job
from cluster.store.storage import ArtifactStore, new_run_name, open_store
from tune.persona.config import PersonaConfig, StageResources
from tune.persona.plan import Plan, make_plan, measured_step_times, plan_markdown
from tune.persona.probe import probe_served

log = logging.getLogger(__name__)
PERSONA_KIND = "persona"
DEMO_CONFIG = REPO_ROOT / "configs" / "persona.demo.yaml"


# --- pieces that run anywhere (driver or Ray task) ------------------------------------------------
def base_path(registry_paths: list[str], base: str) -> str:
    """A path or HF id `from_pretrained` reads for the registry id `base` (s3:// downloaded once)."""
    from cluster.models.loading import decide_load, resolve_source
    from cluster.node import node_facts

    registry = ModelRegistry.load(registry_paths)
    return resolve_source(decide_load(base, registry.get(base), node_facts()))


def _reporter(store_uri: str, endpoint_url: str | None, job_id: str | None, task: str, stall_after_s: float):
    if job_id is None:
        return None
    from cluster.ops.progress import ProgressReporter

    return ProgressReporter(open_store(store_uri, endpoint_url), job_id, task=task, stall_after_s=stall_after_s)


def _stage_heartbeat(reporter, stage: str, base: str, stall_after_s: float, load_stall_after_s: float):
    """`on_step` for the trainer (tune/persona/train.py): step 0 (trainer built) starts the step
    limit, -1 (training done: held-out loss, save, upload) goes back to the load limit."""

    def on_step(step: int) -> None:
        if step == 0:
            reporter.phase(stage, item=base, stall_after_s=stall_after_s)
        elif step < 0:
            reporter.phase(stage, item=base, stall_after_s=load_stall_after_s)
        else:
            reporter.heartbeat(step=step)

    return on_step


def run_stage(stage: str, *, registry_paths: list[str], base: str, rows: list, held_out: list, lora: dict,
              settings: dict, chat_template_kwargs: dict, store_uri: str, endpoint_url: str | None, prefix: str,
              sft_adapter_key: str | None = None, job_id: str | None = None, stall_after_s: float = 1800.0,
              load_stall_after_s: float = 1800.0, subdir: str = "") -> dict:
    """One training stage ("sft" or "dpo") where Ray placed it: train, upload `<subdir><stage>/adapter/`
    under the run `prefix` (the job's run; a persona sweep's run with subdir `trials/<id>/`).
    Returns {"result": StageResult dict, "files": [uploaded names], "wall_s"}."""
    from tune.persona.train import (
        DpoSettings,
        LoraSettings,
        SftSettings,
        train_dpo,
        train_sft,
    )

    t0 = time.time()
    store = open_store(store_uri, endpoint_url)
    reporter = _reporter(store_uri, endpoint_url, job_id, stage, stall_after_s)
    on_step = None
    if reporter is not None:
        # Loading the model and building the trainer get the load limit; from then on a heartbeat
        # per optimizer step, and the job kills a stage silent for stall_after_s.
        reporter.phase(stage, item=base, stall_after_s=load_stall_after_s)
        on_step = _stage_heartbeat(reporter, stage, base, stall_after_s, load_stall_after_s)
    try:
        path = base_path(registry_paths, base)
        with tempfile.TemporaryDirectory(prefix=f"yard-persona-{stage}-") as tmp:
            if stage == "sft":
                result = train_sft(path, rows, held_out, LoraSettings(**lora), SftSettings(**settings), Path(tmp) / "out",
                                   chat_template_kwargs=chat_template_kwargs, on_step=on_step)
            else:
                adapter = store.download_folder(sft_adapter_key, Path(tmp) / "sft-adapter")
                result = train_dpo(path, str(adapter), rows, held_out, LoraSettings(**lora), DpoSettings(**settings),
                                   Path(tmp) / "out", chat_template_kwargs=chat_template_kwargs, on_step=on_step)
            kind, model_id, name = prefix.split("/")
            writer = store.new_run(kind, model_id, name=name)
            writer.put_dir(f"{subdir}{stage}/adapter", result.adapter_dir)
    except BaseException as exc:
        if reporter is not None:
            from cluster.ops.progress import one_line

            reporter.finish("failed", one_line(exc))
        raise
    if reporter is not None:
        reporter.finish("succeeded")
    out = result.to_dict()
    out["adapter_dir"] = f"{prefix}/{subdir}{stage}/adapter"
    return {"result": out, "files": writer.files, "wall_s": round(time.time() - t0, 2)}


def run_merge(*, registry_paths: list[str], base: str, adapter_key: str, dtype: str, gguf_quants: list[str],
              store_uri: str, endpoint_url: str | None, prefix: str) -> dict:
    """Merge the final adapter into the base (`model/`) and export GGUF quants (`gguf/`) where
    llama.cpp is found. Returns {"files", "gguf": [{quant, file, message}], "wall_s"}."""
    from tune.persona.gguf import export_gguf
    from tune.persona.merge import merge_adapter

    t0 = time.time()
    store = open_store(store_uri, endpoint_url)
    kind, model_id, name = prefix.split("/")
    writer = store.new_run(kind, model_id, name=name)
    gguf = []
    with tempfile.TemporaryDirectory(prefix="yard-persona-merge-") as tmp:
        adapter = store.download_folder(adapter_key, Path(tmp) / "adapter")
        merged = merge_adapter(base_path(registry_paths, base), str(adapter), Path(tmp) / "model", dtype=dtype)
        writer.put_dir("model", merged)
        for quant in gguf_quants:
            path, message = export_gguf(merged, Path(tmp) / "gguf", quant)
            key = writer.put_file(f"gguf/{Path(path).name}", path) if path else None
            gguf.append({"quant": quant, "file": key, "message": message})
    return {"files": writer.files, "gguf": gguf, "wall_s": round(time.time() - t0, 2)}


# --- driver ---------------------------------------------------------------------------------------
def resolve_registry(cfg: PersonaConfig) -> list[str]:

    # absolute: Ray tasks may run in another working directory
    return [str(Path(p).resolve()) for p in cfg.registry_paths()]


def prepare_data(cfg: PersonaConfig, registry_paths: list[str]):
    """(PrepResult, the base's path) on the driver; ConfigError for an unknown base, PrepError when
    no valid SFT row is left."""
    from transformers import AutoTokenizer

    from tune.persona.data import prepare

    registry = ModelRegistry.load(registry_paths)
    spec = registry.get(cfg.base)
    path = base_path(registry_paths, cfg.base)
    cfg.prep.data_dir = str(cfg.resolve_path(cfg.prep.data_dir))
    tokenizer = AutoTokenizer.from_pretrained(path, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    return prepare(cfg.prep, tokenizer, chat_template_kwargs=cfg.chat_template_kwargs), path


def prep_summary(prep) -> dict:
    """The counts of a PrepResult (its rows stay out of summary.json)."""
    return {"sft_rows": len(prep.sft), "dpo_rows": len(prep.dpo), "sft_held_out_rows": len(prep.sft_held_out),
            "dpo_held_out_rows": len(prep.dpo_held_out), "bad_lines": len(prep.bad), "bad": prep.bad[:50],
            "duplicates": prep.duplicates, "stripped_system": prep.stripped_system,
            "lengths": {k: {q: v for q, v in d.items() if q != "values"} for k, d in prep.lengths.items()},
            "recommended_max_length": prep.recommended_max_length}


def check_resources(cfg: PersonaConfig) -> None:
    """A stage asking for more GPUs than the Ray cluster has would wait forever: one line instead."""
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    for name in ("sft", "dpo", "merge", "probe"):
        want = getattr(cfg.resources, name).num_gpus
        if (name != "dpo" or cfg.dpo is not None) and want > have:
            raise ConfigError(f"resources.{name}.num_gpus: {want:g} but the Ray cluster has {have:g} GPU(s) "
                              f"(set it to 0 to run on CPU)")


def _options(res: StageResources) -> dict:
    opts = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "max_retries": 0}
    if res.accelerator_type:
        opts["accelerator_type"] = res.accelerator_type
    return opts


def run_watched(submit, store: ArtifactStore, job_id: str, task: str, cfg: PersonaConfig, incidents: list[dict],
                on_stall=None):
    """`submit()` (a Ray task reporting as `task`) to its result; an attempt that stalls is killed
    and submitted again, `cfg.stall_retries` times at most (then TaskStalled ends the job).
    `on_stall(incident)` runs for each killed attempt (the ledger's "stalled" row), before a rerun."""
    from cluster.ops.watch import TaskStalled, wait_watched

    for attempt in range(1, cfg.stall_retries + 2):
        started = time.time()
        try:
            # before its first record an attempt is starting: the load limit holds
            return wait_watched(submit(), store, job_id, task, cfg.load_stall_after_s, attempt=attempt)
        except TaskStalled as exc:
            retry = attempt <= cfg.stall_retries
            incidents.append({**exc.incident(retried=retry), "attempt": attempt,
                              "wall_s": round(time.time() - started, 1)})
            if on_stall is not None:
                on_stall(incidents[-1])
            if not retry:
                raise
    raise AssertionError("unreachable")


def run_persona(cfg: PersonaConfig, *, config_path: str | None = None, stage_fn=None) -> tuple[int, dict]:
    """The whole job: (exit code, summary). UserError (ConfigError, PrepError) before any Ray task
    for bad input. `stage_fn`: the training stage task (default `run_stage`; tests pass one that hangs)."""
    import ray

    from cluster.capacity.prices import job_prices
    from cluster.runtime import connect
    from tune.persona.cost import cost_plan, record_stages, record_stall
    from tune.persona.data import write_prep_report
    from tune.persona.report import write_report

    with naming_source(config_path or "persona config"):  # every input, before Ray
        from serve.probes.probe_suite import load_suite

        registry_paths = resolve_registry(cfg)
        if cfg.probe.enabled:
            load_suite(cfg.resolve_path(cfg.probe.suite))
        t0 = time.time()
        prep, _ = prepare_data(cfg, registry_paths)
        prep_s = time.time() - t0
        prices = job_prices(cfg)
    store = open_store(cfg.storage.uri, cfg.storage.endpoint_url)
    plan = make_plan(cfg, len(prep.sft), len(prep.dpo), measured_step_times(store, cfg))
    connect(cfg.ray)
    check_resources(cfg)
    run = new_run_name()
    prefix = f"{PERSONA_KIND}/{cfg.name}/{run}"
    writer = store.new_run(PERSONA_KIND, cfg.name, name=run)
    common = dict(registry_paths=registry_paths, base=cfg.base, store_uri=store.uri, endpoint_url=cfg.storage.endpoint_url,
                  prefix=prefix)
    summary: dict = {"name": cfg.name, "base": cfg.base, "run": run, "prefix": prefix, "plan": plan.to_dict(),
                     "lora": cfg.lora.model_dump()}
    with run_job("persona", cfg, store, config_path=config_path, stall_after_s=cfg.stall_after_s) as job:
        reporter = job.reporter("main", total=5)
        job.plan = cost_plan(plan, cfg)  # `yard cost` shows it beside the ledger
        reporter.phase("prep", item=cfg.base)
        with tempfile.TemporaryDirectory(prefix="yard-persona-") as tmp:
            for path in write_prep_report(prep, Path(tmp)).values():
                writer.put_file(Path(path).name, path)
        summary["prep"] = prep_summary(prep)
        reporter.advance(item="prep")
        actual_s = {}
        stages: list[dict] = []
        incidents: list[dict] = []
        summary["incidents"] = incidents
        stage_task = ray.remote(stage_fn or run_stage)
        # the driver waits while a stage loads and then steps: its own record allows both
        waiting_s = cfg.load_stall_after_s + cfg.stall_after_s
        reporter.phase("sft", item=cfg.base, stall_after_s=waiting_s)
        sft = run_watched(lambda: stage_task.options(**_options(cfg.resources.sft)).remote(
            "sft", rows=prep.sft, held_out=prep.sft_held_out, lora=cfg.lora.model_dump(), settings=cfg.sft.model_dump(),
            chat_template_kwargs=cfg.chat_template_kwargs, job_id=job.job_id, stall_after_s=cfg.stall_after_s,
            load_stall_after_s=cfg.load_stall_after_s, **common),
            store, job.job_id, "sft", cfg, incidents, on_stall=lambda i: record_stall(job, cfg, i))
        writer.files += sft["files"]
        stages.append(sft["result"])
        actual_s["sft"] = sft["wall_s"]
        reporter.advance(item="sft")
        adapter_key = sft["result"]["adapter_dir"]
        if cfg.dpo is not None and prep.dpo:
            reporter.phase("dpo", item=cfg.base, stall_after_s=waiting_s)
            dpo = run_watched(lambda: stage_task.options(**_options(cfg.resources.dpo)).remote(
                "dpo", rows=prep.dpo, held_out=prep.dpo_held_out, lora=cfg.lora.model_dump(),
                settings=cfg.dpo.model_dump(), chat_template_kwargs=cfg.chat_template_kwargs,
                sft_adapter_key=adapter_key, job_id=job.job_id, stall_after_s=cfg.stall_after_s,
                load_stall_after_s=cfg.load_stall_after_s, **common),
                store, job.job_id, "dpo", cfg, incidents, on_stall=lambda i: record_stall(job, cfg, i))
            writer.files += dpo["files"]
            stages.append(dpo["result"])
            actual_s["dpo"] = dpo["wall_s"]
            adapter_key = dpo["result"]["adapter_dir"]
        elif cfg.dpo is not None:
            summary["dpo_skipped"] = "no valid DPO pairs after prep"
        else:
            summary["dpo_skipped"] = "dpo: null in the config"
        reporter.advance(item="dpo")
        reporter.phase("merge", item=cfg.base, stall_after_s=cfg.stall_after_s)
        merged = ray.get(ray.remote(run_merge).options(**_options(cfg.resources.merge)).remote(
            adapter_key=adapter_key, dtype=cfg.merge.dtype, gguf_quants=cfg.gguf.quants if cfg.gguf.enabled else [],
            **common))
        writer.files += merged["files"]
        actual_s["merge"] = merged["wall_s"]
        summary.update(stages=stages, gguf=merged["gguf"], actual_s=actual_s, prep_s=round(prep_s, 2))
        reporter.advance(item="merge")
        local = not store.uri.startswith("s3://")
        model_path = str(Path(store.uri).resolve() / prefix / "model") if local else prefix
        summary["model"] = store.locate(f"{prefix}/model/config.json").rsplit("/", 1)[0]
        summary["child"] = register(cfg, registry_paths, model_path if local else None, run)
        reporter.phase("probe", item=cfg.name)
        if cfg.probe.enabled:
            summary["probe"] = probe_served(cfg, store, model_path, registry_paths, reporter=None)
        else:
            summary["probe"] = None
        reporter.advance(item="probe")
        failed = summary["probe"] is not None and summary["probe"]["status"] != "ok"
        summary["cost"] = record_stages(job, cfg, actual_s, prices, kept=not failed)
        with tempfile.TemporaryDirectory(prefix="yard-persona-report-") as tmp:
            files = write_report(cfg, summary, plan, stages, Path(tmp))
            for path in files.values():
                writer.put_file(Path(path).name, path)
        summary["report"] = store.locate(f"{prefix}/report.md")
        summary["seconds"] = round(time.time() - t0, 1)
        writer.put_json("summary.json", summary)
        writer.complete(status="failed" if failed else "ok", job_id=job.job_id)
        job.add_artifact(prefix)
        job.summary = {k: summary.get(k) for k in ("name", "base", "run", "report", "child", "seconds")}
        if failed:
            job.fail("the probe of the merged model failed (see the report)")
        reporter.finish("failed" if failed else "succeeded")
    return (1 if failed else 0), {"status": "failed" if failed else "ok", **summary}


def register(cfg: PersonaConfig, registry_paths: list[str], model_dir: str | None, run: str) -> dict:
    """The merged model joins the zoo's lineage as a child of its base (derivation "persona");
    {"id", "registered", "why"} with the reason when it does not."""
    from cluster.models.zoo import register_child

    child = cfg.resolved_child_id
    zoo_dir = zoo_dir_of(cfg.base, registry_paths)
    why = ("register_child is false" if not cfg.register_child else "the base is not a zoo model" if zoo_dir is None
           else "S3 store (the zoo registry points at local dirs)" if model_dir is None else None)
    if why:
        log.info("merged model not registered in a zoo: %s", why)
        return {"id": child, "registered": False, "why": why}
    register_child(zoo_dir, child, model_dir, parent=cfg.base, derivation="persona", replace=True,
                   notes=f"persona {cfg.name} run {run}: SFT{'+DPO' if cfg.dpo is not None else ''} LoRA r {cfg.lora.r}")
    return {"id": child, "registered": True, "zoo": str(zoo_dir), "why": None}


def print_plan(cfg: PersonaConfig, prep, plan: Plan) -> None:
    print(f"yard persona {cfg.name}: base {cfg.base}; {len(prep.sft)} SFT rows, {len(prep.dpo)} DPO pairs after prep "
          f"({len(prep.bad)} bad lines, {prep.duplicates} duplicates, {len(prep.sft_held_out)} + "
          f"{len(prep.dpo_held_out)} held out); recommended max_length {prep.recommended_max_length}")
    print(plan_markdown(plan))


def main(argv: list[str]) -> int:
    parser = job_parser("yard persona", "persona fine-tuning: prep, SFT, DPO, merge, probe", DEMO_CONFIG)
    parser.add_argument("--plan", action="store_true", help="prep, then print steps and the wallclock/cost table; no training")
    args = parser.parse_intermixed_args(argv)  # `CONFIG --plan k=v` as well as `CONFIG k=v --plan`
    cfg = job_config(args, PersonaConfig)
    if args.plan:
        prep, _ = prepare_data(cfg, resolve_registry(cfg))
        measured = measured_step_times(open_store(cfg.storage.uri, cfg.storage.endpoint_url), cfg)
        print_plan(cfg, prep, make_plan(cfg, len(prep.sft), len(prep.dpo), measured))
        return 0
    code, summary = run_persona(cfg, config_path=args.config)
    probe = summary.get("probe")
    if probe:
        for cand in probe["candidates"]:
            for cond, s in cand.get("conditions", {}).items():
                judge = s["judge"]["mean"] if s.get("judge") else None
                groups = "  ".join(f"{g} {v['pass_rate']:.0%}" for g, v in s["groups"].items() if v["probes"])
                print(f"probe {cand['variant']:<6} {cond:<15} pass {s['pass_rate']:.0%}  ({groups})"
                      + (f"  judge {judge:.1f}" if judge is not None else ""))
    print(f"child: {summary['child']['id']} ({'registered' if summary['child']['registered'] else summary['child']['why']})")
    print(f"report: {summary['report']}")
    return code


def demo(store, zoo_registry: str, quick: bool = True) -> dict:
    """`yard demo`'s persona step: the demo config as shipped on the zoo `yard demo` built (about
    2.5 minutes on 2 cores): its 120 SFT steps are what it takes for the child to beat its base
    without the system prompt. `quick` changes nothing here."""
    overrides = ["zoo=null", f"registry=[{zoo_registry}]", f"storage.uri={store.uri}"]
    cfg = load_config(DEMO_CONFIG, PersonaConfig, overrides)
    try:
        code, summary = run_persona(cfg, config_path=str(DEMO_CONFIG))
    except UserError as exc:
        return {"status": "failed", "report": None, "error": str(exc)}
    return summary
