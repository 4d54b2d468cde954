"""What to do after an attempt at a unit of work: the playbook's retry rules in one place.

    policy = RetryPolicy(retries=1, stall_retries=1)
    tries = [Attempt("error", "ValueError: bad shard 3"), Attempt("error", "ValueError: bad shard 3")]
    policy.decide(tries)   # Decision("skipped", "skipped after the same error twice: ValueError: bad shard 3")

The rules (seed 000's playbook, as the DNA job applies them):
- an error is retried up to `retries` times, but the same error signature twice in a row stops it
  at once ("skipped": a deterministic error does not get better by paying for it again);
- a unit killed for a late heartbeat ("stalled") is rerun up to `stall_retries` times, then failed;
- a unit killed at its time limit ("timeout") is failed at once: it had all the time it asked for;
- a lost worker or node ("infra") is rerun like an error, but its signature is not compared
  (two preemptions in a row are bad luck, not a deterministic bug).

`error_signature` turns an error's text into what is compared: the last line that names an
exception, with addresses, numbers of ids and paths of temporary files taken out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

OUTCOMES = ("ok", "error", "stalled", "timeout", "infra")
_EXCEPTION_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Fault|Failure)\b.*)$")
_VOLATILE = [
    (re.compile(r"0x[0-9a-fA-F]+"), "0x?"),  # object addresses
    (re.compile(r"(/tmp|/var/folders)/\S+"), "<tmp>"),  # per-attempt temporary paths
    (re.compile(r"\bpid[ =:]*\d+", re.IGNORECASE), "pid ?"),
    (re.compile(r"\d+(\.\d+)?\s*(s|ms|seconds)\b"), "? s"),  # timings
]


@dataclass(frozen=True)
class Attempt:
    """One attempt's outcome (OUTCOMES) and, for an error, its signature."""

    outcome: str
    signature: str = ""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"attempt outcome {self.outcome!r} (allowed: {', '.join(OUTCOMES)})")


@dataclass(frozen=True)
class Decision:
    """"ok", "retry", "failed" or "skipped", and why (empty for ok)."""

    action: str
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 1  # reruns after an error or a lost worker
    stall_retries: int = 1  # reruns after a stall kill

    def decide(self, tries: list[Attempt]) -> Decision:
        """What follows the last of `tries` (every attempt so far, oldest first)."""
        last = tries[-1]
        if last.outcome == "ok":
            return Decision("ok")
        if last.outcome == "timeout":
            return Decision("failed", "past its time limit")
        if last.outcome == "stalled":
            stalls = sum(t.outcome == "stalled" for t in tries)
            if stalls <= self.stall_retries:
                return Decision("retry", f"stalled (rerun {stalls} of {self.stall_retries})")
            return Decision("failed", f"stalled {stalls} times")
        errors = [t for t in tries if t.outcome in ("error", "infra")]
        if last.outcome == "error":
            signatures = [t.signature for t in tries if t.outcome == "error"]
            if len(signatures) >= 2 and signatures[-1] == signatures[-2]:
                return Decision("skipped", f"skipped after the same error twice: {last.signature}")
        if len(errors) <= self.retries:
            return Decision("retry", f"{last.outcome} (retry {len(errors)} of {self.retries})")
        return Decision("failed", f"{len(errors)} attempts failed; last: {last.signature or last.outcome}")


def error_signature(text: str, limit: int = 300) -> str:
    """The comparable core of an error: the last line naming an exception (else the last non-empty
    line) with addresses, temporary paths, pids and timings masked."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    named = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    line = (named or lines or [""])[-1]
    for pattern, repl in _VOLATILE:
        line = pattern.sub(repl, line)
    return line[:limit]
