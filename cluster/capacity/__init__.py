"""Cost and capacity: what work held (ledger.py), priced (prices.py, cost.py, cost_report.py,
`yard cost`: cost_cli.py); GPU and AWS instance facts (gpus.py, instances.py); the cluster
launcher's config (launch.py, `yard cluster config`) and its AWS quota preflight (quotas.py).

May import cluster's top-level modules, cluster.store and cluster.models."""
