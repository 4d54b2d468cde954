"""A sweep's cost: its plan before launch (`yard sweep CONFIG --plan`) and a ledger row per trial.

    plan = sweep_plan(cfg, store)                 # trials, expected trial and wall seconds, resources
    print(plan_text(plan, prices))                # the --plan table
    cost_md = record_sweep(job, rows, cfg, prices, prepare_s=40.0, timing_s=12.0)   # the leaderboard's last lines

Plan: a trial's seconds are the mean of the finished trials of this sweep's latest published run
in the store (same name: same recipe space) when there is one, else the stated assumption; trials
run `max_concurrent_trials` at a time, after one prepare step (teacher logits, baseline). Trials
are priced at the connected cluster's accelerator (CPU cores when a trial asks for no GPU).

Ledger: one row per trial attempt, its wall time in the "train" phase (a trial's prune, distil,
heal, quantize and evaluate are one process; the trial does not time them apart), and one row each
for the prepare and timing steps ("evaluate"). A trial's wall time is its progress record's life
(started to last update: a trial the watchdog killed included, which Tune's own `time_total_s`
misses since it never reported again), else Tune's `time_total_s`. ok -> kept, stopped by ASHA ->
stopped (not waste), error -> failed, or stalled when the watchdog killed it for a late heartbeat;
an attempt killed and rerun (`trial-<id>.killed<n>`) is a stalled row of its own.
"""
from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)

ASSUMED_TRIAL_S = {"gpu": 900.0, "cpu": 60.0}
ASSUMED_PREPARE_S = {"gpu": 300.0, "cpu": 30.0}
# a timing visit (tune/sweep/timing.py): HF times base and candidate for `min_visit_s` in one
# process (a load or two on top); vLLM starts a process and an engine per visit (82-99 s for a new
# engine on the H200, issue 26), then generates for seconds
ASSUMED_VISIT_OVERHEAD_S = {"hf": 2.0, "vllm": 90.0}


def timing_plan(cfg, trials: int) -> tuple[float, str] | None:
    """(seconds, what they assume) of the timing phase after `trials` trials; None when it is off."""
    t = cfg.timing
    if not t.enabled or trials < 1:
        return None
    engine = cfg.eval.engine.name
    if engine == "vllm":  # every visit a process of its own, the base's included
        visits, each = (trials + 1) * t.rounds, ASSUMED_VISIT_OVERHEAD_S["vllm"] + t.min_visit_s
    else:
        visits, each = trials * t.rounds, ASSUMED_VISIT_OVERHEAD_S["hf"] + t.min_visit_s
    return visits * each, f"timing phase: {visits} visits x {each:.0f} s ({engine}; each trial kept)"


def _measured_trial_s(store, name: str) -> tuple[float | None, str]:
    try:
        art = store.latest("sweep", name, prefer=("rows.json",))
        rows = store.get_json(art.key) if art is not None and art.name == "rows.json" else []
    except Exception as exc:  # noqa: BLE001 - a plan must not fail on an odd old run
        log.debug("no measured trials for %s: %s", name, exc)
        return None, ""
    seconds = [r.get("wall_s") or r.get("seconds") for r in rows if r.get("status") == "ok"]
    seconds = [float(s) for s in seconds if s]
    return (sum(seconds) / len(seconds), art.run.name) if seconds else (None, "")


def sweep_plan(cfg, store) -> dict:
    """Ledger-shaped planned units: the prepare step and each trial, with the basis of each figure."""
    res = cfg.resources.ledger_resources()
    device = "gpu" if res["gpus"] else "cpu"
    trials = cfg.search.trial_count()
    measured, run = _measured_trial_s(store, cfg.name)
    trial_s = measured if measured is not None else ASSUMED_TRIAL_S[device]
    prepare_s = ASSUMED_PREPARE_S[device]
    assumptions = [f"prepare step (teacher logits, baseline) {prepare_s:.0f} s on {device}"]
    if measured is None:
        assumptions.append(f"{trial_s:.0f} s per trial on {device} (no finished trial of sweep {cfg.name} in the store)")
    if res["gpus"] and not res["accelerator"]:
        assumptions.append("GPU type unknown before connecting to the cluster: priced as unpriced until it runs")
    unit = {"job_id": "", "kind": "sweep", "market": "", "where": "", **res}
    units = [{**unit, "unit": "prepare", "phases": {"evaluate": prepare_s}},
             {**unit, "unit": "trials", "phases": {"train": trials * trial_s}}]
    waves = math.ceil(trials / max(cfg.search.max_concurrent_trials, 1))
    basis = {"prepare": "assumed", "trials": f"{trials} x {trial_s:.0f} s, " + (
        f"measured (sweep run {run})" if measured is not None else "assumed")}
    wall = prepare_s + waves * trial_s
    timing = timing_plan(cfg, trials)
    if timing is not None:
        units.append({**unit, "unit": "timing", "phases": {"evaluate": timing[0]}})
        basis["timing"] = "assumed"
        assumptions.append(timing[1])
        wall += timing[0]
    return {"kind": "sweep", "units": units, "basis": basis, "groups": {"trials": "trial "}, "trials": trials,
            "trial_s": round(trial_s, 1), "wall_s": round(wall, 1), "assumptions": assumptions}


def plan_text(plan: dict, prices) -> str:
    """The `--plan` lines: trials, expected seconds and cost on demand and on spot."""
    from cluster.capacity.cost import entry_usd, money, plan_entries

    entries = plan_entries(plan)
    try:
        usd = {m: money(sum(entry_usd(e, prices, m) for e in entries)) for m in ("on_demand", "spot")}
    except Exception as exc:  # noqa: BLE001 - an unpriced GPU type still shows the plan
        usd = {"on_demand": f"unpriced ({exc})", "spot": "-"}
    lines = [f"{plan['trials']} trials ({plan['basis'].get('trials', '-')}), "
             f"expected wall time {plan['wall_s']:.0f} s; on {entries[0].node_type if entries else '-'}: "
             f"{usd['on_demand']} on demand, {usd['spot']} spot. Prices: {prices.source}."]
    lines += [f"- assumed: {a}" for a in plan.get("assumptions") or []]
    return "\n".join(lines)


def record_sweep(job, rows: list[dict], cfg, prices, *, prepare_s: float, timing_s: float = 0.0,
                 incidents: list[dict] | None = None, timing_failed: str | None = None,
                 trials_recorded: bool = False) -> list[str]:
    """Ledger rows for the prepare step, every trial and the timing step; returns the leaderboard's
    cost section (plan beside actual, then the cost line, last). A timing step that failed
    (`timing_failed`: its error) is a failed row with that reason: its time is waste, not hidden.
    `trials_recorded`: the trials are on an earlier job's ledger (a resume after that job's timing
    step failed), so this job adds only those that ran in it (`--restart-errored`): each is paid once."""
    from cluster.capacity.cost import JobCost
    from cluster.capacity.cost_report import report_section

    from tune.sweep.trial import trial_task

    res = cfg.resources.ledger_resources()
    stalled = {i.get("trial_id") for i in incidents or [] if "stall" in str(i.get("kind", "")) and not i.get("retried")}
    attempts = _attempt_records(job.store, job.job_id)
    job.ledger.add(unit="prepare", phases={"evaluate": prepare_s}, outcome="kept", **res)
    for r in rows:
        task = trial_task(r["trial_id"])
        if trials_recorded and task not in attempts:  # finished in the earlier job, on its ledger
            continue
        killed = sorted((t for t in attempts if t.startswith(f"{task}.killed")), key=lambda t: int(t.rsplit("killed", 1)[1]))
        for n, name in enumerate(killed, start=1):
            job.ledger.add(unit=f"trial {r['trial_id']}", phases={"train": attempts[name][0]}, outcome="stalled",
                           attempt=n, where=name, reason=attempts[name][1], **res)
        outcome = {"ok": "kept", "stopped": "stopped"}.get(r["status"], "failed")
        if outcome == "failed" and r["trial_id"] in stalled:
            outcome = "stalled"
        wall = attempts[task][0] if task in attempts else float(r.get("wall_s") or r.get("seconds") or 0.0)
        job.ledger.add(unit=f"trial {r['trial_id']}", phases={"train": wall}, outcome=outcome, attempt=len(killed) + 1,
                       where=task, reason=str(r.get("error") or ""), **res)
    if timing_s:
        job.ledger.add(unit="timing", phases={"evaluate": timing_s}, outcome="failed" if timing_failed else "kept",
                       reason=timing_failed or "", **res)
    this = JobCost(job.job_id, "sweep", "running", "", None, job.ledger.entries, job.plan)
    return ["", *report_section(this, prices), ""]


def _attempt_records(store, job_id: str) -> dict[str, tuple[float, str]]:
    """task -> (seconds from its record's start to its last update, message) for the job's trial
    records (`trial-<id>` and killed attempts' `trial-<id>.killed<n>`)."""
    out = {}
    for key in store.list_state(f"progress/{job_id}/"):
        try:
            rec = store.get_state(key)
        except Exception as exc:  # noqa: BLE001 - a record deleted or half-written: Tune's time stands in
            log.debug("progress record %s: %s", key, exc)
            continue
        task = str(rec.get("task") or "") if isinstance(rec, dict) else ""
        started = rec.get("started_at") if task.startswith("trial-") else None
        if started is not None:
            last = max(float(rec.get(k) or started) for k in ("updated_at", "heartbeat_at"))
            out[task] = (max(last - float(started), 0.0), str(rec.get("message") or ""))
    return out


def print_plan(cfg) -> int:
    """`yard sweep CONFIG --plan`: connect (for the cluster's GPU type), print the plan, start nothing."""
    from cluster.capacity.prices import job_prices
    from cluster.runtime import connect
    from cluster.store.storage import open_store

    prices = job_prices(cfg)
    connect(cfg.ray)
    print(plan_text(sweep_plan(cfg, open_store(cfg.storage.uri, cfg.storage.endpoint_url)), prices))
    return 0
