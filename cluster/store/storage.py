"""Artifact store: one interface, a local directory or S3 (boto3) behind it. Import it from here.

`open_store` picks the backend for a URI. The interface, its errors and key helpers live in
cluster/store/storage_base.py, which both backends build on, and are re-exported here, so a caller needs
only this module. Artifacts are append-only runs completed by a marker; a small mutable *state*
area holds records overwritten in place (progress heartbeats, job status). Every write is atomic.

    >>> store = open_store(".yard")                                  # doctest: +SKIP
    >>> run = store.new_run("dna", "llama-a")                        # doctest: +SKIP
    >>> run.put_json("responses.json", {"items": []}); run.complete()  # doctest: +SKIP
    >>> store.latest("dna", "llama-a", prefer=(".npy", ".json")).key   # doctest: +SKIP
"""
from __future__ import annotations

from cluster.store.storage_base import (MARKER, STATE_PREFIX, TEMP_PREFIX, Artifact, ArtifactStore, RunInfo, RunWriter,
                                  StoreError, check_key, check_part, new_run_name, safe_model_id)
from cluster.store.storage_local import LocalStore

__all__ = ["MARKER", "STATE_PREFIX", "TEMP_PREFIX", "Artifact", "ArtifactStore", "LocalStore", "RunInfo", "RunWriter",
           "StoreError", "check_key", "check_part", "new_run_name", "open_store", "safe_model_id"]


def open_store(uri: str = ".yard", endpoint_url: str | None = None) -> ArtifactStore:
    """A store from a URI: `s3://bucket/prefix` or a local directory path."""
    if uri.startswith("s3://"):
        from cluster.store.storage_s3 import S3Store  # boto3 loads only for an S3 store

        return S3Store(uri, endpoint_url=endpoint_url)
    if "://" in uri:
        raise StoreError(f"storage uri {uri!r}: only s3:// or a local path is supported")
    return LocalStore(uri)
