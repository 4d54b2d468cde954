"""Jobs and operations: the job runner (jobs.py: run_job, manifests), job and task records
(job_record.py, progress.py), killing a stalled task (watch.py), `yard status` (status.py), the
console's live view (live.py) and the retry rules (attempts.py).

May import cluster's top-level modules, cluster.store and cluster.capacity (ledger, prices, gpus)."""
