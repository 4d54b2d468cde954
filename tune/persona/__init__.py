"""Persona fine-tuning (issue 6): data prep, SFT then DPO, merge, plan, probe, sweep."""
