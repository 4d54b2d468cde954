"""Persona probes: `yard probe` (probes.py), the probe suite file (probe_suite.py), the rule checks
(probe_rules.py), the report (probe_report.py) and stored probe runs, the console's saved sessions
included (probe_runs.py).

May import cluster/, serve's top-level client and config, and serve.judge.judge."""
