"""Scoring a model for a sweep: benchmark loaders (datasets.py) and metrics (metrics.py),
evaluation on either engine (evaluate.py), the judge benchmark (judge_bench.py), the users' Score
(score.py) and the base's cached evaluation (baseline.py).

May import cluster/, actors/ and serve's client and judge (serve.client, serve.judge.judge)."""
