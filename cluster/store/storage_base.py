"""The artifact store's interface, shared by both backends: `ArtifactStore`, its errors, run
names and key checks.

Artifacts are append-only: `kind/model_id/YYYYMMDD-HHMMSS-<run id>/<file>`. A run is complete
only once its marker `_COMPLETE.json` is written (after every file of the run); `latest()` never
returns an incomplete run, nor an older run over a newer complete one. Writes are atomic: no
partially written file is ever visible (temp + rename locally; one PUT or a completed multipart
upload on S3).

Beside the append-only artifacts, a small mutable *state* area (`_state/...`) holds records that
are overwritten in place (progress heartbeats, job status). State writes are atomic too.

It exists apart from cluster/store/storage.py so that the backends (storage_local.py, storage_s3.py)
build on it while `open_store` there picks among them: nothing imports in a circle. Callers
import these names from `cluster.store.storage`, the store's public face.
"""
from __future__ import annotations

import abc
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from cluster.config import UserError

MARKER = "_COMPLETE.json"
STATE_PREFIX = "_state"
TEMP_PREFIX = ".tmp-"  # in-flight local writes; reserved in every backend so listings agree
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_RUN = re.compile(r"^(\d{8}-\d{6})-([0-9a-z]+)$")


class StoreError(UserError, RuntimeError):
    """A storage problem phrased for the user (bad key, unreachable bucket, missing object)."""


def safe_model_id(model_id: str) -> str:
    """Model ids may hold '/' (HF ids); keys use '--' instead, as the HF cache does."""
    flat = model_id.replace("/", "--")
    if not _SAFE.match(flat) or ".." in flat.replace("--", ""):
        raise StoreError(f"model id {model_id!r} cannot be used in a storage key")
    return flat


def check_part(name: str, what: str) -> str:
    if not _SAFE.match(name):
        raise StoreError(f"{what} {name!r} must match {_SAFE.pattern}")
    return name


def check_key(key: str, prefix: bool = False) -> str:
    """A key is a relative '/'-separated path with no empty, '.' or '..' part, no backslash or
    control character, and no part starting with TEMP_PREFIX. With `prefix=True` the empty
    string and one trailing '/' are allowed too (a listing prefix)."""
    body = key[:-1] if prefix and key.endswith("/") else key
    if prefix and not body:
        return key
    parts = body.split("/")
    if (
        not body
        or "\\" in body
        or any(ord(c) < 32 for c in body)
        or any(p in ("", ".", "..") or p.startswith(TEMP_PREFIX) for p in parts)
    ):
        what = "key prefix" if prefix else "key"
        raise StoreError(f"bad storage {what} {key!r}: use a relative 'a/b/c' path without '.', '..' or empty parts")
    return key


def new_run_name(now: datetime | None = None) -> str:
    """`YYYYMMDD-HHMMSS-<run id>`; the run id starts with zero-padded microseconds so runs of
    the same second still sort by start time, then 6 random hex digits."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{now.microsecond:06d}{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RunInfo:
    kind: str
    model_id: str  # as stored (safe form)
    name: str  # YYYYMMDD-HHMMSS-<run id>
    complete: bool
    marker: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def prefix(self) -> str:
        return f"{self.kind}/{self.model_id}/{self.name}"

    @property
    def ok(self) -> bool:
        """Complete and not marked failed."""
        return self.complete and self.marker.get("status", "ok") == "ok"


@dataclass(frozen=True)
class Artifact:
    run: RunInfo
    key: str  # full key of the chosen file

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


class RunWriter:
    """Writes the files of one run; `complete()` publishes it (writes the marker last)."""

    def __init__(self, store: "ArtifactStore", kind: str, model_id: str, name: str):
        self.store, self.kind, self.model_id, self.name = store, kind, model_id, name
        self.files: list[str] = []
        self.completed = False

    @property
    def prefix(self) -> str:
        return f"{self.kind}/{self.model_id}/{self.name}"

    def key(self, filename: str) -> str:
        return f"{self.prefix}/{filename}"

    def put_bytes(self, filename: str, data: bytes) -> str:
        self._check(filename)
        key = self.key(filename)
        self.store.put_bytes(key, data)
        self.files.append(filename)
        return key

    def put_json(self, filename: str, obj: Any) -> str:
        return self.put_bytes(filename, json.dumps(obj, indent=2, default=str).encode())

    def put_file(self, filename: str, path) -> str:
        self._check(filename)
        key = self.key(filename)
        self.store.put_file(key, path)
        self.files.append(filename)
        return key

    def put_dir(self, dirname: str, path) -> list[str]:
        """Upload a directory tree (e.g. a saved model) under `dirname/`."""
        root = Path(path)
        keys = []
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            keys.append(self.put_file(f"{dirname}/{f.relative_to(root).as_posix()}", f))
        return keys

    def complete(self, status: str = "ok", **meta: Any) -> RunInfo:
        """Write the marker; only now does the run count. status 'failed' keeps the files but
        `latest()` skips the run."""
        if self.completed:
            raise StoreError(f"run {self.prefix} is already complete")
        marker = {"status": status, "files": self.files, "completed_at": datetime.now(timezone.utc).isoformat(), **meta}
        self.store.put_bytes(self.key(MARKER), json.dumps(marker, indent=2, default=str).encode())
        self.completed = True
        return RunInfo(self.kind, self.model_id, self.name, True, marker)

    def _check(self, filename: str) -> None:
        if self.completed:
            raise StoreError(f"run {self.prefix} is complete; start a new run to add {filename}")
        if filename == MARKER:
            raise StoreError(f"bad artifact file name {filename!r}: {MARKER} is written by complete()")
        try:
            check_key(filename)
        except StoreError:
            raise StoreError(f"bad artifact file name {filename!r}") from None


class ArtifactStore(abc.ABC):
    """The interface both backends implement. Keys are '/'-separated, relative to the store root."""

    uri: str

    # --- primitives each backend implements -------------------------------------------------
    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Atomically write `data` at `key` (never visible half-written)."""

    @abc.abstractmethod
    def put_file(self, key: str, path) -> None:
        """Atomically upload a local file (multipart on S3 for large files)."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a key; StoreError naming the key when it does not exist."""

    @abc.abstractmethod
    def download(self, key: str, path) -> None:
        """Copy a key to a local path (parent directories created)."""

    @abc.abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """All keys under `prefix` (a '/'-terminated folder or a key prefix), sorted."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def _delete(self, key: str) -> None:
        """Delete a key (only `delete_state` calls this: artifacts are never deleted)."""

    # --- built on the primitives -----------------------------------------------------------
    def new_run(self, kind: str, model_id: str, name: str | None = None) -> RunWriter:
        check_part(kind, "artifact kind")
        name = name or new_run_name()
        # runs() only sees names of this shape; any other name would hide the run forever
        if not _RUN.match(name):
            raise StoreError(f"run name {name!r} must look like YYYYMMDD-HHMMSS-<run id> (see new_run_name)")
        return RunWriter(self, kind, safe_model_id(model_id), name)

    def locate(self, key: str) -> str:
        """Where a key can be found by a person: a local path or an s3:// URI."""
        return f"{self.uri.rstrip('/')}/{key}"

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def download_folder(self, prefix: str, target) -> Path:
        """Every key under `prefix/` into the local folder `target`, at the same relative paths
        (a model or adapter another node wrote); StoreError when there is none. `target`."""
        folder = prefix.rstrip("/") + "/"
        keys = [k for k in self.list_keys(folder) if not k.endswith("/")]
        if not keys:
            raise StoreError(f"{self.uri}/{folder.rstrip('/')}: nothing there")
        for key in keys:
            self.download(key, Path(target) / key[len(folder):])
        return Path(target)

    def runs(self, kind: str, model_id: str) -> list[RunInfo]:
        """Every run of (kind, model_id), oldest first, complete or not."""
        check_part(kind, "artifact kind")
        mid = safe_model_id(model_id)
        prefix = f"{kind}/{mid}/"
        names: dict[str, bool] = {}
        for key in self.list_keys(prefix):
            rest = key[len(prefix):]
            run, _, filename = rest.partition("/")
            if not _RUN.match(run):
                continue
            names[run] = names.get(run, False) or filename == MARKER
        out = []
        for run in sorted(names):
            marker = self.get_json(f"{prefix}{run}/{MARKER}") if names[run] else {}
            out.append(RunInfo(kind, mid, run, names[run], marker))
        return out

    def model_ids(self, kind: str) -> list[str]:
        """Stored model ids (safe form) that have any run of `kind`."""
        check_part(kind, "artifact kind")
        return sorted({k.split("/")[1] for k in self.list_keys(f"{kind}/") if k.count("/") >= 3})

    def latest(self, kind: str, model_id: str, prefer: Iterable[str] = (".npy", ".json")) -> Artifact | None:
        """The newest complete (status ok) run; within it the first file whose name ends with
        the earliest extension of `prefer`. None when no complete run exists. Never an older
        run over a newer complete one, never an incomplete run."""
        prefer = tuple(prefer)
        for run in reversed(self.runs(kind, model_id)):
            if not run.ok:
                continue
            files = [f for f in run.marker.get("files", []) if f != MARKER]
            for ext in prefer:
                match = sorted(f for f in files if f.endswith(ext))
                if match:
                    return Artifact(run, f"{run.prefix}/{match[0]}")
            return Artifact(run, f"{run.prefix}/{MARKER}") if not prefer else None
        return None

    def find_cached(self, kind: str, model_id: str, cache_key: dict, filename: str) -> RunInfo | None:
        """The newest complete ok run of (kind, model_id) completed with `cache_key=...` equal to
        `cache_key` and holding `filename`: computed-once results (BI scores, teacher logits)
        cached over the append-only runs. Write them with `run.complete(cache_key=...)`."""
        for run in reversed(self.runs(kind, model_id)):
            if run.ok and run.marker.get("cache_key") == cache_key and filename in run.marker.get("files", []):
                return run
        return None

    # --- mutable state area -------------------------------------------------------------------
    def put_state(self, key: str, obj: Any) -> None:
        self.put_bytes(f"{STATE_PREFIX}/{key}", json.dumps(obj, default=str).encode())

    def get_state(self, key: str) -> Any:
        return self.get_json(f"{STATE_PREFIX}/{key}")

    def delete_state(self, key: str) -> None:
        """Delete a state record (a no-op when it does not exist)."""
        self._delete(f"{STATE_PREFIX}/{check_key(key)}")

    def list_state(self, prefix: str = "") -> list[str]:
        """State keys (without the `_state/` prefix) under `prefix`."""
        base = f"{STATE_PREFIX}/"
        return [k[len(base):] for k in self.list_keys(base + prefix)]
