"""Where Ray Tune keeps a sweep's trials and checkpoints: beside the artifact store (`<store>/tune`).

Both sweeps hand it to `tune.RunConfig` (the compression sweep, tune/sweep/sweep.py, and the persona
sweep, tune/persona/sweep.py); it lives in a module of its own so that neither sweep imports the
other. An S3 store with a custom endpoint (MinIO) gets a pyarrow filesystem that reaches it.
"""
from __future__ import annotations

import os
from pathlib import Path

from cluster.store.storage import ArtifactStore


def tune_storage(store: ArtifactStore, endpoint_url: str | None):
    """(storage_path, storage_filesystem) for Ray Tune beside the artifact store."""
    if store.uri.startswith("s3://"):
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            from pyarrow import fs

            return f"{store.uri[len('s3://'):].rstrip('/')}/tune", fs.S3FileSystem(endpoint_override=endpoint)
        return f"{store.uri.rstrip('/')}/tune", None
    return str(Path(store.uri).resolve() / "tune"), None
