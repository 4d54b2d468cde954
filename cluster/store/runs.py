"""Finding a stored run by what a user types: "NAME", "NAME/RUN" or "KIND/NAME/RUN".

    run = find_run(store, "sweep", "prune-kd")            # its newest complete ok run
    run = find_run(store, "sweep", "prune-kd/20261130-040244-2676c7")
"""
from __future__ import annotations

import re

from cluster.config import UserError
from cluster.store.storage import ArtifactStore, RunInfo, safe_model_id

_RUN_NAME = re.compile(r"^\d{8}-\d{6}-[0-9a-z]+$")


class RunRefError(UserError, ValueError):
    """A run reference that names no usable run, phrased as one line naming what exists."""


def parse_run_ref(ref: str, kind: str) -> tuple[str, str | None]:
    """(name, run name or None) from "name", "name/RUN" or "<kind>/name/RUN"."""
    if not isinstance(ref, str) or not ref.strip("/ "):
        raise RunRefError(f"{kind} ref: expected 'NAME', 'NAME/RUN' or '{kind}/NAME/RUN', got {ref!r}")
    parts = ref.strip().strip("/").split("/")
    run = parts.pop() if len(parts) > 1 and _RUN_NAME.match(parts[-1]) else None
    if len(parts) > 1 and parts[0] == kind:
        parts = parts[1:]
    # what is left is the whole name: an "org/name" run is stored as "org--name"
    return "/".join(parts), run


def find_run(store: ArtifactStore, kind: str, ref: str) -> RunInfo:
    """The run `ref` names: "NAME" (its newest complete ok run), "NAME/RUN_NAME" or the full
    prefix "KIND/NAME/RUN_NAME" (that run, which must be complete).

    Raises RunRefError naming the stored names (or the name's runs) when `ref` matches none."""
    name, run_name = parse_run_ref(ref, kind)
    runs = store.runs(kind, name)
    if not runs:
        names = store.model_ids(kind)
        known = f"stored {kind}s: {', '.join(names)}" if names else f"no {kind}s stored yet"
        raise RunRefError(f"{kind} {name!r}: not found in {store.uri} ({known})")
    prefix = f"{kind}/{safe_model_id(name)}"
    if run_name is None:
        for run in reversed(runs):
            if run.ok:
                return run
        raise RunRefError(f"{kind} {name!r}: none of its {len(runs)} runs is complete and ok "
                          f"(newest: {prefix}/{runs[-1].name}); name one as {prefix}/RUN_NAME to use it anyway")
    for run in runs:
        if run.name == run_name:
            if not run.complete:
                raise RunRefError(f"{kind} run {run.prefix}: not complete (still running, or interrupted)")
            return run
    newest = ", ".join(r.name for r in runs[-3:])
    raise RunRefError(f"{kind} {name!r}: no run {run_name!r} in {store.uri} ({len(runs)} runs, newest: {newest})")
