"""What a model *is*, for cache keys: a hash of its files, not its registry id.

Results computed from a model (BI scores, teacher logits, the baseline) are cached in the store.
Keyed by the model id alone, a rebuilt zoo or a child re-registered under the same id would
silently reuse the old model's results; `model_content_key` names the weights instead.

    >>> plan = decide_load("llama-a", spec, node_facts())          # doctest: +SKIP
    >>> model_content_key(spec, plan)                               # doctest: +SKIP
    {'source_kind': 'local', 'files_sha256': '3f1c...', 'dtype': 'float32', 'load_in': 'bf16', ...}
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

from cluster.models.loading import LoadPlan
from cluster.models.registry import ModelSpec

# What from_pretrained reads from a model folder: weights, configs, tokenizer files, remote code.
CONTENT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".jinja", ".txt", ".tiktoken", ".py")
_CHUNK_BYTES = 8 * 2**20
# (path, size, mtime_ns, inode, ctime_ns) -> sha256: a 16 GB model is read once per process. A
# file rewritten in place changes its ctime, which no tool can set back (an mtime can be: rsync -t),
# so a stale digest is never returned.
_FILE_DIGESTS: dict[tuple, str] = {}
_LOCK = threading.Lock()
# The same memo on disk, so that the next process (a rerun, a dry run) does not read the weights
# again: a round of 13 real-size models is ~75 GB, a minute of hashing before any host starts.
# YARD_DIGEST_CACHE names the file; empty turns it off.
DIGEST_CACHE_ENV = "YARD_DIGEST_CACHE"
_RACY_S = 2.0  # a file written this recently may change again within its mtime's resolution: not kept
_COMPACT_LINES = 20_000
_disk: dict[tuple, str] | None = None


def digest_cache_path() -> Path | None:
    value = os.environ.get(DIGEST_CACHE_ENV)
    if value == "":
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "modelyard" / "file-digests.jsonl"


def _disk_digests() -> dict[tuple, str]:
    """The digest file's entries (read once per process; unreadable lines are skipped). A file
    grown past _COMPACT_LINES is rewritten with only the entries whose file is still unchanged."""
    global _disk
    if _disk is not None:
        return _disk
    _disk, path, lines = {}, digest_cache_path(), 0
    if path is None or not path.is_file():
        return _disk
    try:
        for line in path.read_text().splitlines():
            lines += 1
            try:
                row = json.loads(line)
                _disk[tuple(row["k"])] = row["sha256"]
            except (ValueError, KeyError, TypeError):
                continue
        if lines > _COMPACT_LINES:
            live = {k: v for k, v in _disk.items() if _stat_key(Path(k[0])) == k}
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text("".join(json.dumps({"k": list(k), "sha256": v}) + "\n" for k, v in live.items()))
            tmp.replace(path)
            _disk = live
    except OSError:
        pass
    return _disk


def _file_key(path: Path, st: os.stat_result) -> tuple:
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def _stat_key(path: Path) -> tuple | None:
    try:
        return _file_key(path, path.stat())
    except OSError:
        return None


def _keep_on_disk(memo: tuple, st: os.stat_result, digest: str) -> None:
    path = digest_cache_path()
    if path is None or time.time() - max(st.st_mtime, st.st_ctime) < _RACY_S:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:  # one short line per write: appends from several processes interleave whole
            f.write(json.dumps({"k": list(memo), "sha256": digest}) + "\n")
    except OSError:
        pass  # a read-only home only costs the next process a re-read


def file_sha256(path: str | Path) -> str:
    """The sha256 of one file, streamed in chunks and memoized by (path, size, mtime, inode, ctime): per
    process, and across processes in the digest file (`digest_cache_path`)."""
    path = Path(path).resolve()
    st = path.stat()
    memo = _file_key(path, st)
    with _LOCK:
        if memo in _FILE_DIGESTS:
            return _FILE_DIGESTS[memo]
        known = _disk_digests().get(memo)
    if known is not None:
        with _LOCK:
            _FILE_DIGESTS[memo] = known
        return known
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    digest = h.hexdigest()
    with _LOCK:
        _FILE_DIGESTS[memo] = digest
    _keep_on_disk(memo, st, digest)
    return digest


def dir_sha256(path: str | Path) -> str:
    """One sha256 over the names and bytes of a model folder's top-level content files (the ones
    `from_pretrained` reads; hidden files and sub-folders are left out)."""
    root = Path(path)
    files = sorted(p for p in root.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name.endswith(CONTENT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{root}: no model files ({', '.join(CONTENT_SUFFIXES)}) to identify it by")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def model_content_key(spec: ModelSpec, plan: LoadPlan) -> dict:
    """A JSON-able dict that changes whenever the loaded model would: the files' hash for a local
    model (source + revision for HF and S3 ones), plus dtype and the load decision's settings."""
    key: dict = {"source_kind": plan.source_kind}
    if plan.source_kind == "local":
        key["files_sha256"] = dir_sha256(Path(plan.source).expanduser())
    else:
        # HF: the revision pins the files only when it is a commit or tag, not a branch like main.
        # S3: the objects' ETags are not read (that would list the bucket on every lookup); a
        # prefix rewritten in place needs a new revision or prefix to be seen as new.
        key.update(source=plan.source, revision=plan.revision)
    key.update(dtype=spec.dtype, load_in=spec.load_in, compute_dtype=plan.dtype, quantization=plan.quantization,
               device="cpu" if plan.device_map is None else "cuda", num_gpus=spec.num_gpus,
               trust_remote_code=plan.trust_remote_code)
    return key
