"""The CLI's rich console: full width in a terminal, wide (no folding) in logs and pipes."""
from __future__ import annotations

import sys

from rich.console import Console


def console() -> Console:
    """Tables printed into job logs (`ray job logs`, CI, files) keep whole model ids on one line."""
    return Console() if sys.stdout.isatty() else Console(width=200)
