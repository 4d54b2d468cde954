"""The persona job's ledger and plan in `yard cost`'s terms: one row per stage (sft, dpo, merge),
and for a persona sweep one row per trial.

    job.plan = cost_plan(plan, cfg)                     # the projection at the chosen GPU type
    line = record_stages(job, cfg, actual_s, prices, kept=True)   # the report's last line
    line = record_trials(job, rows, sweep_cfg, prices)             # the persona sweep's leaderboard's

The persona plan (tune/persona/plan.py) projects each stage's seconds per GPU type with its own
step-time table; here the chosen type's seconds become planned units on the resources each stage
asks for, so `yard cost` prices plan and actual at one rate and the difference is time. A stage
holds its task's GPUs (`resources.<stage>`) at their accelerator type (the configured one, else
the cluster's); its Ray task's wall time, model load included, is booked as "train". A run whose
probe failed is not kept (its store run is completed "failed"), so its stages are waste.
"""
from __future__ import annotations

from cluster.capacity.ledger import unit_resources

PARTS = ("sft", "dpo", "merge")


def _resources(cfg, stage: str) -> dict:
    res = getattr(cfg.resources, stage)
    return unit_resources(res.num_gpus, res.num_cpus, accelerator=res.accelerator_type)


def cost_plan(plan, cfg) -> dict:
    """Planned units (outcome "planned") from the projection at the plan's chosen GPU type."""
    proj = plan.projection(plan.gpu_type)
    units = [{"job_id": "", "kind": "persona", "unit": part, "market": "", "where": "", "phases": {"train": seconds},
              **_resources(cfg, part)} for part, seconds in proj.seconds.items() if part in PARTS]
    basis = {u["unit"]: f"projected for {plan.gpu_type} (persona plan table)" for u in units}
    return {"kind": "persona", "units": units, "basis": basis, "wall_s": round(proj.total_s, 1),
            "assumptions": [f"step times of `plan.sec_per_step` for {plan.gpu_type}; actual seconds are this "
                            f"run's hardware"]}


def record_stages(job, cfg, actual_s: dict[str, float], prices, *, kept: bool) -> str:
    """A ledger row per stage that ran; returns the job's cost line (or why it is not priced)."""
    from cluster.capacity.cost import JobCost
    from cluster.capacity.cost_report import report_section

    for part in PARTS:
        if part in actual_s:
            killed = sum(1 for e in job.ledger.entries if e.unit == part and e.outcome == "stalled")
            job.ledger.add(unit=part, phases={"train": actual_s[part]}, outcome="kept" if kept else "failed",
                           attempt=killed + 1, where=part, **_resources(cfg, part))
    return report_section(JobCost(job.job_id, "persona", "running", "", None, job.ledger.entries, None), prices)[-1]


def record_trials(job, rows: list[dict], sweep_cfg, prices) -> str:
    """A ledger row per persona sweep trial on `resources.*_per_trial`: its wall time as Tune saw
    it (`wall_s`) as "train" (SFT, DPO, merge and probe are one process). ok -> kept, error ->
    failed; the sweep runs no early-stopping scheduler, so no trial is "stopped". Returns the
    leaderboard's cost line (or why it is not priced)."""
    from cluster.capacity.cost_report import job_cost_line

    res = sweep_cfg.resources.ledger_resources()
    for r in rows:
        job.ledger.add(unit=f"trial {r['trial_id']}", phases={"train": r.get("wall_s") or 0.0},
                       outcome="kept" if r["status"] == "ok" else "failed", where=str(r["trial_id"]),
                       reason=str(r.get("error") or ""), **res)
    return job_cost_line(job, prices)


def record_stall(job, cfg, incident: dict) -> None:
    """A stage attempt the job killed for a late heartbeat: a "stalled" row (waste) for the time it
    held its resources, booked when it is killed, so a job that then gives up still has it."""
    stage = incident["task"]
    job.ledger.add(unit=stage, phases={"train": incident.get("wall_s", 0.0)}, outcome="stalled",
                   attempt=incident.get("attempt", 1), where=stage,
                   reason=f"no heartbeat for {incident['heartbeat_age_s']} s (limit {incident['limit_s']:g} s)",
                   **_resources(cfg, stage))
