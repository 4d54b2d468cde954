"""`yard sweep configs/persona-sweep.demo.yaml`: LoRA rank and SFT learning rate as Ray Tune dimensions
of the persona recipe, ranked by probe consistency, then held-out loss.

    kind: persona_sweep
    name: seoyun-rank
    persona: {base: qwen3-b, zoo: configs/zoo.demo.yaml, prep: {data_dir: ..., held_out_fraction: 0.1}, ...}
    search:
      space:
        lora_r: {grid: [4, 16]}
        sft_lr: {grid: [2.0e-4, 1.0e-3]}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0}

The driver preps the data once (the rows travel to every trial); each trial trains SFT (and DPO),
merges, and probes the merged model with rule checks only: the job's probe step
(`tune.persona.probe`), answered in-process instead of by a Serve app. LoRA alpha keeps the
persona config's alpha/r ratio.

Ranking: `probe_consistency` is the share of probes passed WITHOUT the system prompt (the seed's
point: the persona must hold unprompted), higher first; ties go to the lower SFT held-out loss.
Output: store run `persona_sweep/<name>/<run>/` with leaderboard.md (ending with the job's cost
line: a ledger row per trial, `tune.persona.cost.record_trials`), leaderboard.csv, rows.json, and
each trial's adapters under `trials/<trial>/`.
"""
from __future__ import annotations

import csv
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from cluster.config import YardModel, job_config, job_parser
from cluster.joblog import tune_verbosity
from cluster.ops.jobs import REPO_ROOT, run_job
from cluster.store.storage import new_run_name, open_store
from tune.config import Dimension, ResourcesConfig
from tune.persona.config import PersonaConfig
from tune.persona.probe import probe_in_process
from tune.search_alg import search_algorithm
from tune.tune_storage import tune_storage

log = logging.getLogger(__name__)
SWEEP_KIND = "persona_sweep"
DEMO_CONFIG = REPO_ROOT / "configs" / "persona-sweep.demo.yaml"
LEADERBOARD_COLUMNS = ("rank", "trial_id", "lora_r", "sft_lr", "probe_consistency", "probe_with_system",
                       "heldout_loss", "dpo_heldout_loss", "train_loss", "seconds", "status", "error")


class PersonaSpace(YardModel):
    lora_r: Dimension = Field(default_factory=lambda: Dimension(value=64), description="LoRA rank")
    sft_lr: Dimension = Field(default_factory=lambda: Dimension(value=1e-4), description="SFT learning rate")

    @model_validator(mode="after")
    def _values(self) -> "PersonaSpace":
        for v in self.lora_r.values():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"lora_r: {v!r} is not an integer >= 1")
        for v in self.sft_lr.values():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"sft_lr: {v!r} is not a number > 0")
        return self

    def to_tune(self) -> dict:
        return {"lora_r": self.lora_r.to_tune(), "sft_lr": self.sft_lr.to_tune()}

    def grid_size(self) -> int:
        return math.prod(len(d.grid) for d in (self.lora_r, self.sft_lr) if d.kind == "grid")


class PersonaSearch(YardModel):
    space: PersonaSpace = Field(default_factory=PersonaSpace)
    algorithm: Literal["grid", "random"] = "grid"
    num_samples: int = Field(1, ge=1, description="repeats of the grid, or samples of choice/range dimensions")
    seed: int = 0
    max_concurrent_trials: int = Field(2, ge=1)

    def trial_count(self) -> int:
        return self.space.grid_size() * self.num_samples


class PersonaSweepConfig(YardModel):
    """`kind: persona_sweep`: the persona config plus a search over lora.r and sft.lr."""

    kind: Literal["persona_sweep"] = "persona_sweep"
    name: str = Field("persona-sweep", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    persona: PersonaConfig
    search: PersonaSearch = Field(default_factory=PersonaSearch)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    stall_after_s: float = Field(1800.0, gt=0)


def trial_config(persona: dict, lora_r: int, sft_lr: float) -> PersonaConfig:
    """The persona config of one trial: rank and learning rate set, alpha at the config's alpha/r."""
    cfg = PersonaConfig.model_validate(persona)
    ratio = cfg.lora.alpha / cfg.lora.r
    lora = cfg.lora.model_copy(update={"r": int(lora_r), "alpha": max(1, round(ratio * lora_r))})
    return cfg.model_copy(update={"lora": lora, "sft": cfg.sft.model_copy(update={"lr": float(sft_lr)})})


def run_persona_trial(config: dict, setup: dict) -> None:
    """The Tune function trainable: SFT (-> DPO) -> merge -> probe on this trial's slot; one report."""
    from ray import tune

    from cluster.store.storage import open_store
    from tune.persona.job import base_path, run_stage
    from tune.persona.merge import merge_adapter

    t0 = time.time()
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(setup["persona"], config["lora_r"], config["sft_lr"])
    path = base_path(setup["registry_paths"], cfg.base)
    store = open_store(setup["store_uri"], setup["endpoint_url"])
    # the job's own stages, writing under the sweep's run (the driver completes it after the last trial)
    common = dict(registry_paths=setup["registry_paths"], base=cfg.base, lora=cfg.lora.model_dump(),
                  chat_template_kwargs=cfg.chat_template_kwargs, store_uri=setup["store_uri"],
                  endpoint_url=setup["endpoint_url"], prefix=f"{SWEEP_KIND}/{setup['name']}/{setup['run']}",
                  subdir=f"trials/{trial_id}/")
    sft = run_stage("sft", rows=setup["sft"], held_out=setup["sft_held_out"], settings=cfg.sft.model_dump(),
                    **common)["result"]
    final, dpo = sft["adapter_dir"], None
    if cfg.dpo is not None and setup["dpo"]:
        dpo = run_stage("dpo", rows=setup["dpo"], held_out=setup["dpo_held_out"], settings=cfg.dpo.model_dump(),
                        sft_adapter_key=final, **common)["result"]
        final = dpo["adapter_dir"]
    writer = store.new_run(SWEEP_KIND, setup["name"], name=setup["run"])
    with tempfile.TemporaryDirectory(prefix="yard-persona-trial-") as tmp:
        tmp = Path(tmp)
        adapter = store.download_folder(final, tmp / "adapter")
        merged = merge_adapter(path, str(adapter), tmp / "model", dtype=cfg.merge.dtype)
        probe = probe_in_process(cfg, merged, tmp / "probe")
        writer.put_file(f"trials/{trial_id}/probe_report.md", probe["report"])
    conds = probe["candidates"][0]["conditions"]
    tune.report({
        "trial_id": trial_id, "lora_r": cfg.lora.r, "sft_lr": cfg.sft.lr,
        "probe_consistency": conds["without_system"]["pass_rate"],
        "probe_with_system": conds["with_system"]["pass_rate"],
        "heldout_loss": sft["eval_loss"], "dpo_heldout_loss": dpo["eval_loss"] if dpo else None,
        "train_loss": sft["train_loss"], "seconds": round(time.time() - t0, 1)})


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def rank_persona_rows(rows: list[dict]) -> list[dict]:
    """Scored rows by probe consistency (higher first), then held-out loss (lower first); the rest
    unranked at the end. (The compression sweep ranks by Score: `tune.sweep.leaderboard.rank_rows`.)"""
    ok = [r for r in rows if r["status"] == "ok"]
    ok.sort(key=lambda r: (-(r["probe_consistency"] or 0.0),
                           r["heldout_loss"] if _finite(r["heldout_loss"]) else math.inf))
    for i, r in enumerate(ok, 1):
        r["rank"] = i
    rest = [dict(r, rank=None) for r in rows if r["status"] != "ok"]
    return ok + rest


def persona_rows(grid, walls: dict[str, float] | None = None) -> list[dict]:
    """Tune's results as ranked leaderboard rows (ok, or error with its last line). `walls`: a
    trial's wall seconds by its folder name (`_TrialClock`), else Tune's or the trial's own time."""
    rows = []
    for result in grid:
        m, c = dict(result.metrics or {}), dict(result.config or {})
        row = {k: m.get(k) for k in LEADERBOARD_COLUMNS if k not in ("rank", "status", "error")}
        folder = Path(str(result.path)).name
        row.update(lora_r=c.get("lora_r"), sft_lr=c.get("sft_lr"), trial_id=m.get("trial_id") or folder,
                   wall_s=(walls or {}).get(folder) or m.get("time_total_s") or m.get("seconds"))
        if result.error is not None:
            row["status"], row["error"] = "error", str(result.error).strip().splitlines()[-1][:300]
        else:
            row["status"], row["error"] = "ok", None
        rows.append(row)
    return rank_persona_rows(rows)


class _TrialClock:
    """A Tune callback timing each trial from its start to its end or error, in the driver: an
    errored trial reports no metrics, yet held its resources (walls: trial folder -> seconds)."""

    def __new__(cls, walls: dict[str, float]):
        from ray import tune

        started: dict[str, float] = {}

        class Callback(tune.Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                started[Path(str(trial.path)).name] = time.monotonic()

            def on_trial_complete(self, iteration, trials, trial, **info):
                folder = Path(str(trial.path)).name
                if folder in started:
                    walls[folder] = round(time.monotonic() - started[folder], 3)

            on_trial_error = on_trial_complete

        return Callback()


def write_persona_leaderboard(rows: list[dict], out_dir: Path, title: str, cost_line: str = "") -> dict[str, Path]:
    """leaderboard.md and leaderboard.csv, ranked rows first; leaderboard.md ends with `cost_line`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "leaderboard.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LEADERBOARD_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"# {title}", "", "Ranked by probe consistency (probes passed without the system prompt), then "
             "SFT held-out loss. Probes are rule checks only (no judge).", "",
             "| " + " | ".join(LEADERBOARD_COLUMNS) + " |", "|" + "---|" * len(LEADERBOARD_COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in LEADERBOARD_COLUMNS) + " |" for r in rows]
    lines += ["", cost_line] if cost_line else []
    md = out_dir / "leaderboard.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"md": md, "csv": csv_path}


def run_persona_sweep(cfg: PersonaSweepConfig, *, config_path: str | None = None) -> tuple[int, dict]:
    """Prep once, the trials with Ray Tune, the leaderboard in the store. Exit code 0 when every trial
    scored, 1 otherwise (the scored ones are still published)."""
    from ray import tune

    from cluster.capacity.prices import job_prices
    from cluster.runtime import connect
    from tune.persona.cost import record_trials
    from tune.persona.job import prepare_data, resolve_registry

    persona = cfg.persona
    if config_path is not None:
        persona._config_file = config_path  # relative paths resolve against the sweep file
    registry_paths = resolve_registry(persona)
    prep, _ = prepare_data(persona, registry_paths)  # PrepError on zero rows: before Ray starts
    prices = job_prices(persona)  # a bad price table: one line, before Ray
    store = open_store(persona.storage.uri, persona.storage.endpoint_url)
    connect(persona.ray)
    run = new_run_name()
    setup = {"persona": persona.model_dump(), "registry_paths": registry_paths, "store_uri": store.uri,
             "endpoint_url": persona.storage.endpoint_url, "name": cfg.name, "run": run,
             "sft": prep.sft, "sft_held_out": prep.sft_held_out, "dpo": prep.dpo, "dpo_held_out": prep.dpo_held_out}
    with run_job("sweep", cfg, store, config_path=config_path, stall_after_s=cfg.stall_after_s) as job:
        reporter = job.reporter("sweep", total=cfg.search.trial_count())
        reporter.phase("trials")
        trainable = tune.with_resources(tune.with_parameters(run_persona_trial, setup=setup),
                                        {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial})
        search_alg = search_algorithm(cfg)  # its concurrency limit inside it
        storage_path, filesystem = tune_storage(store, persona.storage.endpoint_url)
        walls: dict[str, float] = {}
        tuner = tune.Tuner(trainable, param_space=cfg.search.space.to_tune(),
                           tune_config=tune.TuneConfig(search_alg=search_alg, num_samples=cfg.search.num_samples,
                                                       reuse_actors=cfg.resources.reuse_trial_process),
                           run_config=tune.RunConfig(name=f"{cfg.name}-{run}", storage_path=storage_path,
                                                     storage_filesystem=filesystem, verbose=tune_verbosity(),
                                                     failure_config=tune.FailureConfig(max_failures=0),
                                                     callbacks=[_TrialClock(walls)]))
        rows = persona_rows(tuner.fit(), walls)
        reporter.advance(len(rows))
        ok = [r for r in rows if r["status"] == "ok"]
        writer = store.new_run(SWEEP_KIND, cfg.name, name=run)
        with tempfile.TemporaryDirectory() as tmp:
            title = f"persona sweep {cfg.name} ({run}) on {persona.base}"
            cost = record_trials(job, rows, cfg, prices)
            for p in write_persona_leaderboard(rows, Path(tmp), title, cost).values():
                writer.put_file(p.name, p)
        writer.put_json("rows.json", rows)
        writer.files += [k[len(writer.prefix) + 1:] for k in store.list_keys(f"{writer.prefix}/trials/")]
        summary = {"sweep": cfg.name, "run": run, "base": persona.base, "trials": len(rows), "ok": len(ok),
                   "best": ok[0]["trial_id"] if ok else None, "report": store.locate(writer.key("leaderboard.md")),
                   "cost": cost}
        writer.put_json("summary.json", summary)
        writer.complete(status="ok" if ok else "failed", trials=len(rows))
        job.add_artifact(writer.prefix)
        job.summary = summary
        code = 0 if ok and len(ok) == len(rows) else 1
        if code:
            job.fail(f"{len(rows) - len(ok)} of {len(rows)} trial(s) errored")
        reporter.finish("succeeded" if code == 0 else "failed")
    for r in rows:
        print(f"{r['rank'] or '-':>4} {r['trial_id']:<14} r={r['lora_r']:<4} lr={r['sft_lr']:<8g} "
              f"consistency={r['probe_consistency']} heldout={r['heldout_loss']} {r['status']}")
    print(f"leaderboard: {summary['report']}")
    return code, {"status": "ok" if code == 0 else "failed", **summary, "rows": rows}


def main(argv: list[str]) -> int:
    """`yard sweep CONFIG` for a kind: persona_sweep config (tune/sweep_cli.py dispatches here on kind)."""
    args = job_parser("yard sweep", "persona LoRA rank / learning-rate sweep", DEMO_CONFIG).parse_intermixed_args(argv)
    cfg = job_config(args, PersonaSweepConfig)
    code, _ = run_persona_sweep(cfg, config_path=args.config)
    return code
