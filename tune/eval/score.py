"""The users' compression score, exactly as the competition defines it.

    Score     = max(0.5 * PerfNorm + 0.5 * SpeedNorm, 0)
    PerfNorm  = perf / baseline_perf
    SpeedNorm = 1 - sec_per_token / baseline_sec_per_token
    sec_per_token = total generation seconds / generated tokens, over all benchmarks

    >>> round(score(0.3286, 0.000236, baseline_perf=0.3256, baseline_sec_per_token=0.000273), 4)
    0.5724
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreBreakdown:
    """The two halves of a Score and the Score itself (floored at 0)."""

    perf_norm: float
    speed_norm: float
    score: float


def _check(name: str, value: float, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name}: must be > 0, got {value!r}")
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {value!r}")
    return value


def score_breakdown(
    perf: float, sec_per_token: float, baseline_perf: float, baseline_sec_per_token: float
) -> ScoreBreakdown:
    """PerfNorm, SpeedNorm and Score for one candidate against its baseline.

    Raises ValueError (one line, naming the argument) for negative or non-finite values and for a
    baseline perf or sec_per_token that is not > 0."""
    perf = _check("perf", perf)
    sec_per_token = _check("sec_per_token", sec_per_token)
    baseline_perf = _check("baseline_perf", baseline_perf, positive=True)
    baseline_sec_per_token = _check("baseline_sec_per_token", baseline_sec_per_token, positive=True)
    perf_norm = perf / baseline_perf
    speed_norm = 1.0 - sec_per_token / baseline_sec_per_token
    return ScoreBreakdown(perf_norm, speed_norm, max(0.5 * perf_norm + 0.5 * speed_norm, 0.0))


def score(perf: float, sec_per_token: float, baseline_perf: float, baseline_sec_per_token: float) -> float:
    """Score = max(0.5 * PerfNorm + 0.5 * SpeedNorm, 0); see `score_breakdown` for the errors."""
    return score_breakdown(perf, sec_per_token, baseline_perf, baseline_sec_per_token).score


def sec_per_token(total_generation_seconds: float, generated_tokens: int) -> float:
    """Pure generation time over generated tokens, summed over all benchmarks.

    Raises ValueError when no tokens were generated (the speed is then undefined, not zero)."""
    seconds = _check("total_generation_seconds", total_generation_seconds)
    if isinstance(generated_tokens, bool) or not isinstance(generated_tokens, numbers.Integral):
        raise ValueError(f"generated_tokens: expected an int, got {generated_tokens!r}")
    if generated_tokens <= 0:
        raise ValueError(f"generated_tokens: must be > 0, got {generated_tokens}")
    return seconds / int(generated_tokens)
