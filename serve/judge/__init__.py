"""The LLM judge: KoMT-Bench-style scoring (judge.py, `yard judge`), its questions and prompts
(judge_prompts.py), its reports (judge_report.py), and the replay server that stands in for a real
judge or candidate (replay.py).

May import cluster/ and serve's top-level client and config."""
