"""What a `yard dna` rerun reuses: fingerprints whose weights and settings have not changed.

A second `yard dna` over the same store generates only what is missing. Each model gets a reuse
key before any host starts: what the model *is* (`cluster.models.content.model_content_key`: its files'
hash, or HF/S3 source and revision, plus dtype and the load decision for the node kind the planner
put it on), the registry's chat-template kwargs (they change the prompts), and every provenance
field that decides whether two vectors may be compared (`actors.fingerprint.COMPARED_FIELDS`:
encoder, probe-set hash, projection, decoding, engine). Hosts write the key into each run's
marker. A model is then

- **reused** when its newest complete run is ok, carries the same key, and its files read back
  whole: `dna.npy` a finite vector of `dna.dim` values, `dna.json` with the same provenance,
  `responses.json` with one answer per probe that still passes the validation gate;
- **not retried** when its last two complete runs failed with the same error under the same key
  (the playbook's "same error twice": skipped), unless `retry_skipped`;
- **generated** otherwise: new, changed, failed last time, made before runs carried a key, or a
  reusable run whose files are missing or unreadable (with a line saying which file and why).

Only the newest complete run is ever reused, never an older one with a matching key: the analysis
reads each model's newest complete ok run (latest-wins), and the reused vector must be that one.
The engine's and llm-dna's versions are recorded but not part of the key, as they are not part of
what `check_comparable` compares; `--force` regenerates everything.

    >>> rerun = decide_rerun(store, cfg, registry, plan, probes)   # doctest: +SKIP
    >>> rerun.todo(model_ids)                                      # the models to generate
"""
from __future__ import annotations

import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from actors.config import DnaConfig
from actors.fingerprint import COMPARED_FIELDS, ProbeSet, make_provenance
from actors.gates import validate_responses
from actors.planner import NodeKind, Plan
from cluster.models.registry import ModelRegistry
from cluster.node import NodeFacts
from cluster.ops.progress import one_line
from cluster.store.storage import ArtifactStore, RunInfo

log = logging.getLogger(__name__)

REUSED = "reused"  # the outcome status of a model whose earlier fingerprint this job reuses
REQUIRED_FILES = ("dna.npy", "dna.json", "responses.json")
# why a model is generated, in the order the console line counts them
WHY = {"new": "new", "forced": "--force", "changed": "changed weights or settings", "failed": "failed last time",
       "skipped": "skipped before (--retry-skipped)", "unusable": "earlier files unusable",
       "unkeyed": "no reuse key"}


def _canonical(obj) -> dict:
    """The key as it reads back from a run marker (JSON: tuples become lists, keys sorted)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def planned_node(kind: NodeKind) -> NodeFacts:
    """The node facts the load decision needs, for a node kind of the plan (memory is left out:
    the planner has already checked it)."""
    gpus = kind.gpus
    return NodeFacts(hostname=f"planned {kind.name}", cuda=gpus > 0, gpu_names=(kind.name,) * gpus,
                     cuda_capabilities=(kind.cuda_capability,) * gpus if kind.cuda_capability else ())


def reuse_keys(cfg: DnaConfig, registry: ModelRegistry, plan: Plan, probes: ProbeSet) -> tuple[dict, dict]:
    """({model: key}, {model: why it has none}) for every model the plan places on a host."""
    from cluster.models.content import model_content_key
    from cluster.models.loading import decide_load

    prov = make_provenance(cfg, probes.sha256, cfg.encoder.name)
    fingerprint = {f: prov.get(f) for f in COMPARED_FIELDS}
    kinds = {k.name: k for k in plan.kinds}
    placed = [(mid, host.node_kind) for host in plan.hosts for mid in host.models]

    def weights_of(item):
        mid, kind = item
        spec = registry.get(mid)
        try:
            return mid, model_content_key(spec, decide_load(mid, spec, planned_node(kinds[kind]))), None
        except Exception as exc:  # noqa: BLE001 - a model we cannot identify is generated, not fatal
            return mid, None, f"cannot identify its weights here ({one_line(exc, 200)})"

    keys, unkeyed = {}, {}
    # hashed side by side: sha256 releases the GIL, and one model's files are read one after another
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(placed), os.cpu_count() or 1))) as pool:
        for mid, weights, why in pool.map(weights_of, placed):
            if why is not None:
                unkeyed[mid] = why
                continue
            spec = registry.get(mid)
            keys[mid] = _canonical({"weights": weights, "chat_template_kwargs": spec.chat_template_kwargs,
                                    "fingerprint": fingerprint})
    return keys, unkeyed


def check_run_files(store: ArtifactStore, run: RunInfo, cfg: DnaConfig, probes: ProbeSet,
                    fingerprint: dict) -> tuple[str | None, dict]:
    """(why the run cannot be reused or None, its validation stats). Reads every file it checks."""
    files = set(run.marker.get("files", []))
    lacking = [f for f in REQUIRED_FILES if f not in files]
    if lacking:
        return f"{run.prefix}: the run lists no {', '.join(lacking)}", {}
    name = ""
    try:
        name = "dna.npy"
        vector = np.load(io.BytesIO(store.get_bytes(f"{run.prefix}/dna.npy")), allow_pickle=False)
        if vector.shape != (cfg.dna.dna_dim,) or not np.all(np.isfinite(vector)):
            return f"{run.prefix}/dna.npy: not a finite vector of {cfg.dna.dna_dim} values (shape {vector.shape})", {}
        name = "dna.json"
        doc = store.get_json(f"{run.prefix}/dna.json")
        prov = (doc.get("provenance") or {}) if isinstance(doc, dict) else {}
        if _canonical({f: prov.get(f) for f in COMPARED_FIELDS}) != fingerprint:
            return f"{run.prefix}/dna.json: its provenance does not match its run's reuse key", {}
        name = "responses.json"
        items = store.get_json(f"{run.prefix}/responses.json")["items"]
        if [it["prompt"] for it in items] != list(probes.probes):
            return f"{run.prefix}/responses.json: {len(items)} answers, not one per probe of {probes.probe_set_id}", {}
        answers = [it["response"] for it in items]
        if not all(isinstance(a, str) for a in answers):
            return f"{run.prefix}/responses.json: an answer is not text", {}
    except Exception as exc:  # noqa: BLE001 - missing, truncated or garbled: generate again, never crash
        return f"{run.prefix}/{name}: unreadable ({one_line(exc, 200)})", {}
    stats = validate_responses(run.marker.get("model_id", run.model_id), answers, cfg.gates)
    if not stats.ok:  # the gates were tightened since: its answers would not be published now
        return f"{run.prefix}/responses.json: fails today's validation gate ({stats.reason})", {}
    return None, stats.to_dict()


def _same_error_twice(runs: list[RunInfo], key: dict) -> bool:
    """The playbook's skip rule over stored runs: the last two complete runs both errored with the
    same signature, both under `key` (changed weights or settings lift the skip)."""
    if len(runs) < 2:
        return False
    a, b = runs[-2:]
    if not all(r.marker.get("outcome") == "error" and r.marker.get("reuse_key") == key for r in (a, b)):
        return False
    signatures = [r.marker.get("error_signature") or r.marker.get("reason") for r in (a, b)]
    return signatures[0] is not None and signatures[0] == signatures[1]


@dataclass
class Rerun:
    """What this round reuses, leaves out and generates (see the module docstring)."""

    reused: dict[str, dict] = field(default_factory=dict)  # model -> its outcome (status "reused")
    not_retried: dict[str, dict] = field(default_factory=dict)  # model -> its outcome (status "skipped")
    generate: dict[str, tuple[str, str]] = field(default_factory=dict)  # model -> (WHY key, detail)
    keys: dict[str, dict] = field(default_factory=dict)  # model -> the reuse key its new run records
    notes: list[str] = field(default_factory=list)  # lines for the console, in order

    def todo(self, model_ids: list[str]) -> list[str]:
        """`model_ids` less the reused and the not retried, in order, those that failed last time
        after the rest: a vLLM host runs each shape's models one after another on one engine, and
        one that fails again can cost that engine (a checkpoint vLLM cannot load ends it), so it
        goes where there is nothing left to swap in (on the H200, the round's rerun started an
        engine a second time for a new model queued behind such a checkpoint)."""
        todo = [m for m in model_ids if m not in self.reused and m not in self.not_retried]
        again = {m for m, (why, _) in self.generate.items() if why in ("failed", "skipped")}
        return [m for m in todo if m not in again] + [m for m in todo if m in again]

    def outcomes(self) -> list[dict]:
        return [*self.reused.values(), *self.not_retried.values()]

    def summary_line(self, total: int) -> str | None:
        """"reused 9 of 11 fingerprints from earlier runs (same weights and settings); generating 2 (...)";
        None when nothing was reused or left out."""
        if not self.reused and not self.not_retried:
            return None
        n_new = total - len(self.reused) - len(self.not_retried)
        counts = {}
        for why, _ in self.generate.values():
            counts[why] = counts.get(why, 0) + 1
        detail = ", ".join(f"{counts[w]} {WHY[w]}" for w in WHY if w in counts)
        line = (f"reused {len(self.reused)} of {total} fingerprints from earlier runs (same weights and settings); "
                + (f"generating {n_new}" + (f" ({detail})" if detail else "") if n_new else "nothing to generate"))
        if self.not_retried:
            line += f"; not retrying {len(self.not_retried)} skipped before"
        return line


def decide_rerun(store: ArtifactStore, cfg: DnaConfig, registry: ModelRegistry, plan: Plan, probes: ProbeSet, *,
                 force: bool = False, retry_skipped: bool = False) -> Rerun:
    """Sort the plan's models into reused, not retried and generated (rejected models are the
    plan's business: they are left out here). Never raises for what the store holds."""
    rerun = Rerun()
    rerun.keys, unkeyed = reuse_keys(cfg, registry, plan, probes)
    fingerprint = next(iter(rerun.keys.values()))["fingerprint"] if rerun.keys else None
    earlier = skipped_before = 0
    for mid in [m for h in plan.hosts for m in h.models]:
        runs = [r for r in store.runs("dna", mid) if r.complete]
        earlier += bool(runs)
        key = rerun.keys.get(mid)
        if not runs:
            rerun.generate[mid] = ("new", "no earlier run")
            continue
        newest = runs[-1]
        if key is None:
            rerun.generate[mid] = ("unkeyed", unkeyed[mid])
            rerun.notes.append(f"not reused: {mid}: {unkeyed[mid]}; generating it")
        elif force:
            rerun.generate[mid] = ("forced", "--force")
        elif not newest.ok:
            if _same_error_twice(runs, key):
                skipped_before += 1
                why = (f"skipped in an earlier run after the same error twice ({newest.prefix}: "
                       f"{newest.marker.get('error_signature') or newest.marker.get('reason')})")
                if retry_skipped:
                    rerun.generate[mid] = ("skipped", why)
                else:
                    rerun.not_retried[mid] = {"model_id": mid, "status": "skipped", "attempts": 0,
                                              "reason": f"model {mid}: {why}; not retried (--retry-skipped to try again)"}
                    rerun.notes.append(f"not retried: {mid}: {why}; --retry-skipped tries it again")
            else:
                rerun.generate[mid] = ("failed", f"{newest.prefix} {newest.marker.get('outcome') or 'failed'}")
        elif newest.marker.get("reuse_key") != key:
            made = "changed" if "reuse_key" in newest.marker else "no reuse key (made before keys, or imported)"
            rerun.generate[mid] = ("changed", f"{newest.prefix}: {made}")
        else:
            why, stats = check_run_files(store, newest, cfg, probes, fingerprint)
            if why is not None:
                rerun.generate[mid] = ("unusable", why)
                rerun.notes.append(f"not reused: {mid}: {why}; generating it again")
                log.warning("not reusing %s: %s; generating it again", mid, why)
            else:
                rerun.reused[mid] = {"model_id": mid, "status": REUSED, "attempts": 0, "stats": stats,
                                     "reused_from": newest.prefix,
                                     "reason": f"reused {newest.prefix} (same weights and settings)"}
    # --force / --retry-skipped with nothing earlier to act on: a note and exit 0, not an error.
    # Both flags only widen what is generated; without an earlier round the job already generates
    # every model, which is what they ask for, and a script that always passes them keeps working.
    if force:
        rerun.notes.append(f"--force: no earlier DNA runs of these models in {store.uri}; every model is generated anyway"
                           if not earlier else f"--force: reuse off; generating all {len(rerun.generate)} model(s) again")
    elif retry_skipped and not skipped_before:
        rerun.notes.append(f"--retry-skipped: no model of this job was skipped in an earlier run in {store.uri}; "
                           "nothing to retry" if earlier else
                           f"--retry-skipped: no earlier DNA runs of these models in {store.uri}; nothing to retry")
    return rerun
