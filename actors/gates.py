"""The playbook's per-model gates: sanity reply, response validation, first-prompt watchdog.

Each gate turns a silent failure (empty replies reported as success, a model left running for
hours at 200 s/prompt) into a `GateFailure` with one line naming the model, the gate and the
numbers it was judged by. Thresholds come from `actors.config.GateConfig`.

    >>> from actors.config import GateConfig
    >>> sanity_gate("llama-a", "Hello! Yes, I can respond to you.", min_chars=20)
    >>> validate_responses("llama-a", ["x" * 120] * 9 + [""], GateConfig()).valid_fraction
    0.9
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from actors.config import GateConfig

Gate = Literal["sanity", "validation", "watchdog"]


class GateFailure(Exception):
    """A model stopped by a gate. `.gate` is sanity, validation or watchdog; `.reason` is one
    line naming the model."""

    def __init__(self, gate: Gate, reason: str):
        super().__init__(reason)
        self.gate, self.reason = gate, reason

    def __reduce__(self):  # crosses Ray's process boundary intact
        return type(self), (self.gate, self.reason)


def _preview(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())  # one line, whatever the model emitted
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def sanity_gate(model_id: str, reply: str, min_chars: int) -> None:
    """GateFailure when the one-prompt sanity reply is shorter than `min_chars` after strip."""
    n = len(reply.strip())
    if n < min_chars:
        raise GateFailure("sanity", f"model {model_id}: sanity gate: reply of {n} chars < {min_chars}: {_preview(reply)}")


@dataclass(frozen=True)
class ResponseStats:
    n: int
    valid: int  # replies longer than gates.min_reply_chars after strip
    valid_fraction: float
    avg_chars: float
    ok: bool
    reason: str  # "" when ok, else one line naming the model and every rule it broke

    def to_dict(self) -> dict:
        return asdict(self)


def validate_responses(model_id: str, responses: list[str], gates: GateConfig) -> ResponseStats:
    """The playbook's post-extraction rule: at least `min_valid_fraction` of the replies longer
    than `min_reply_chars`, and an average length over `min_avg_chars` (stripped lengths)."""
    lengths = [len(r.strip()) for r in responses]
    n = len(lengths)
    valid = sum(1 for k in lengths if k > gates.min_reply_chars)
    fraction = valid / n if n else 0.0
    avg = sum(lengths) / n if n else 0.0
    broken = []
    if fraction < gates.min_valid_fraction:
        broken.append(f"{valid}/{n} replies ({fraction:.0%}) longer than {gates.min_reply_chars} chars "
                      f"< {gates.min_valid_fraction:.0%}")
    if avg <= gates.min_avg_chars:
        broken.append(f"average reply {avg:.1f} chars <= {gates.min_avg_chars:g}")
    reason = f"model {model_id}: response validation: {'; '.join(broken)}" if broken else ""
    return ResponseStats(n, valid, round(fraction, 4), round(avg, 1), not broken, reason)


def check_responses(model_id: str, responses: list[str], gates: GateConfig) -> ResponseStats:
    """`validate_responses`, raising GateFailure("validation", ...) when the rule is broken."""
    stats = validate_responses(model_id, responses, gates)
    if not stats.ok:
        raise GateFailure("validation", stats.reason)
    return stats


def _size_label(gates: GateConfig, params_b: float) -> str:
    """The watchdog tier a model falls in, as words: '<=10B models', '>100B models'."""
    previous = None
    for tier in gates.watchdog:
        if tier.max_params_b is None or params_b <= tier.max_params_b:
            if tier.max_params_b is not None:
                return f"<={tier.max_params_b:g}B models"
            return f">{previous:g}B models" if previous is not None else "models of any size"
        previous = tier.max_params_b
    return "models of any size"


class Watchdog:
    """The first-prompt watchdog: `check(done, seconds)` after each generation batch (the first
    one included) raises GateFailure("watchdog", ...) when seconds per prompt exceed the limit for
    the model's size, so a model that would run for hours is stopped after one batch."""

    def __init__(self, model_id: str, params_b: float, gates: GateConfig):
        self.model_id = model_id
        self.limit_s = gates.seconds_per_prompt_limit(params_b)
        self.label = _size_label(gates, params_b)
        self.sec_per_prompt: float | None = None

    def check(self, done_prompts: int, seconds: float) -> None:
        if done_prompts <= 0:
            return
        self.sec_per_prompt = seconds / done_prompts
        if self.sec_per_prompt > self.limit_s:
            raise GateFailure(
                "watchdog",
                f"model {self.model_id}: {self.sec_per_prompt:.1f} s/prompt over the {self.limit_s:g} s limit "
                f"for {self.label} after {done_prompts} prompts",
            )
