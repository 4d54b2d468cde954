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
import threading
from pathlib import Path

from cluster.models.loading import LoadPlan
from cluster.models.registry import ModelSpec

# What from_pretrained reads from a model folder: weights, configs, tokenizer files, remote code.
CONTENT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".jinja", ".txt", ".tiktoken", ".py")
_CHUNK_BYTES = 8 * 2**20
# (path, size, mtime_ns, inode) -> sha256: a 16 GB model is read once per process, and a file
# rewritten in place changes its mtime, so a stale digest is never returned.
_FILE_DIGESTS: dict[tuple, str] = {}
_LOCK = threading.Lock()


def file_sha256(path: str | Path) -> str:
    """The sha256 of one file, streamed in chunks and memoized per process by (path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _LOCK:
        if memo in _FILE_DIGESTS:
            return _FILE_DIGESTS[memo]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    with _LOCK:
        _FILE_DIGESTS[memo] = h.hexdigest()
    return _FILE_DIGESTS[memo]


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
