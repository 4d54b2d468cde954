"""The artifact store: one interface (storage.py, built on storage_base.py) over a local folder
(storage_local.py) or S3 (storage_s3.py), and a stored run found by what a user types (runs.py).

May import cluster.config only: every other room builds on the store."""
