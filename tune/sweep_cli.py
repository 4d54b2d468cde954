"""`yard sweep CONFIG`: one command for both sweeps, chosen by the config's `kind:`.

`kind: sweep` runs the compression recipe sweep (tune/sweep/sweep.py); `kind: persona_sweep` the persona
fine-tune's LoRA rank x learning rate sweep (tune/persona/sweep.py), which reuses the compression
sweep's search space and resources. The choice is made here, above both, so neither sweep module
imports the other.
"""
from __future__ import annotations

from cluster.config import job_source, read_yaml
from tune.persona import sweep as persona_sweep
from tune.sweep import sweep


def main(argv: list[str]) -> int:
    """Run the sweep CONFIG describes (the compression sweep's demo config when left out)."""
    config, _ = job_source(sweep.build_parser().parse_intermixed_args(argv))
    if read_yaml(config).get("kind") == "persona_sweep":
        return persona_sweep.main(argv)
    return sweep.main(argv)
