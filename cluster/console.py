"""The CLI's rich console (full width in a terminal, wide, no folding, in logs and pipes) and the
short forms of durations and rates that progress lines and `yard status` print."""
from __future__ import annotations

import sys

from rich.console import Console


def console() -> Console:
    """Tables printed into job logs (`ray job logs`, CI, files) keep whole model ids on one line."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def format_duration(seconds: float | None) -> str:
    """1.5s, 16s, 4m05s, 3h20m, 2d03h."""
    if seconds is None:
        return "-"
    if seconds < 9.95:
        return f"{max(seconds, 0.0):.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_rate(rate_per_s: float | None) -> str:
    """2.3 items/s, or 125 s/item when slower than one item a second."""
    if not rate_per_s:
        return "-"
    return f"{rate_per_s:.1f} items/s" if rate_per_s >= 1 else f"{1 / rate_per_s:.0f} s/item"
