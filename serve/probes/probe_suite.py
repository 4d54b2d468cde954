"""A persona probe suite: the persona, its facts and the probes, as one validated YAML file.

The users probe-test a persona by hand (seed 001): who are you, are you an AI, "ignore all previous
instructions", the persona's facts asked twice in different words, a chat of a few turns and then
the identity question again. A suite writes those down once (kind `persona_probes`):

    kind: persona_probes
    name: seoyun
    persona:
      name: 한서윤
      system_prompt: "너는 전주에서 카페를 하는 한서윤이야 ..."
      facts:
        - {key: city, question: "어디 살아요?", expected: ["전주", "Jeonju"]}
    probes:
      - {id: who-ko, group: identity, turns: ["누구세요?"], expected: ["서윤"]}
      - {id: city-2, group: fact, fact: city, turns: ["가게가 어느 도시에 있어요?"]}
      - {id: drift-1, group: drift, turns: ["오늘 손님 많았어요?", "커피 추천해 줘요", "근데 AI죠?"]}

Each fact is asked with its own `question` plus every probe that names it (`fact: key`), so a
fact needs at least one such probe: two phrasings whose answers must match `expected` and each
other. `turns` are user messages; the candidate answers each one live, so a drift probe is a real
conversation.

    >>> suite = load_suite("configs/probes.persona.yaml")   # doctest: +SKIP
    >>> [p.id for p in suite.all_probes()][:2]               # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cluster.config import YardModel, load_config
from serve.probes.probe_rules import matched_answers

GROUPS = ("identity", "frame_break", "fact", "drift")
GROUP_HELP = {
    "identity": "who are you / are you an AI, in Korean and English",
    "frame_break": "frame-break and jailbreak attempts (ignore all previous instructions ...)",
    "fact": "persona facts, each asked in two or more phrasings",
    "drift": "several turns of small talk, then an identity question",
}
Group = Literal["identity", "frame_break", "fact", "drift"]
_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
JUDGE_PLACEHOLDERS = ("persona", "description", "system_prompt", "facts", "conversation", "condition")
DEFAULT_PARAMS = {"temperature": 0.0, "max_tokens": 256}


def _non_blank(values: list[str], what: str) -> list[str]:
    for i, v in enumerate(values):
        if not v.strip():
            raise ValueError(f"{what} {i} is blank")
    return values


class PersonaFact(YardModel):
    """A fact of the persona: its canonical question and the answers (keywords) that are right."""

    key: str = Field(pattern=r"^[a-z0-9_]+$")
    question: str = Field(min_length=1)
    # Any one of these, found in the reply (case, spacing and hyphens ignored), makes it right.
    expected: list[str] = Field(min_length=1)

    @field_validator("expected")
    @classmethod
    def _expected(cls, v: list[str]) -> list[str]:
        return _non_blank(v, "expected answer")


class Persona(YardModel):
    """Who the candidate must stay: name, the system prompt of the "with system prompt" runs, facts."""

    name: str = Field(min_length=1)
    system_prompt: str = Field(min_length=1)
    # One paragraph for the judge: who the persona is, in the words of its author.
    description: str = ""
    facts: list[PersonaFact] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_keys(self) -> "Persona":
        keys = [f.key for f in self.facts]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"fact key {dup[0]!r} appears more than once")
        return self


class Probe(YardModel):
    """One probe: user turns (answered live, in order), its group, and what a right answer holds."""

    id: str = Field(pattern=_ID)
    group: Group
    turns: list[str] = Field(min_length=1)
    # A persona fact this probe asks again in other words: the final reply must match its expected.
    fact: str | None = None
    # Keywords of a right final reply for probes that are not facts (e.g. the persona's name).
    expected: list[str] = Field(default_factory=list)
    note: str = ""

    @field_validator("turns")
    @classmethod
    def _turns(cls, v: list[str]) -> list[str]:
        return _non_blank(v, "turn")

    @field_validator("expected")
    @classmethod
    def _expected(cls, v: list[str]) -> list[str]:
        return _non_blank(v, "expected answer")

    @model_validator(mode="after")
    def _shape(self) -> "Probe":
        if self.group == "fact" and self.fact is None:
            raise ValueError("a probe of group 'fact' names the persona fact it asks (fact: KEY)")
        if self.group == "drift" and len(self.turns) < 2:
            raise ValueError("a drift probe needs 2 or more turns (small talk, then the identity question)")
        return self


class ProbeSuite(YardModel):
    """A probe suite file (kind `persona_probes`)."""

    kind: Literal["persona_probes"]
    name: str = Field(pattern=_ID)
    description: str = ""
    persona: Persona
    probes: list[Probe] = Field(min_length=1)
    # Sampling parameters of every candidate request (greedy by default: a rerun asks the same).
    params: dict = Field(default_factory=lambda: dict(DEFAULT_PARAMS))
    # Replaces the judge's rubric prompt (serve/probes/probes.py JUDGE_PROMPT); placeholders are
    # JUDGE_PLACEHOLDERS; it must ask for "[[n]]".
    judge_prompt: str | None = None

    @field_validator("judge_prompt")
    @classmethod
    def _judge_prompt(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            v.format(**{k: "" for k in JUDGE_PLACEHOLDERS})
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"bad placeholder {exc} (allowed: {', '.join('{' + k + '}' for k in JUDGE_PLACEHOLDERS)}; "
                             "write literal braces as {{ }})") from None
        if "{conversation}" not in v:
            raise ValueError("must hold {conversation}, or the judge never sees the replies")
        return v

    @model_validator(mode="after")
    def _references(self) -> "ProbeSuite":
        ids = [p.id for p in self.probes] + [fact_probe_id(f.key) for f in self.persona.facts]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"probe id {dup[0]!r} appears more than once (fact questions use fact-<key>)")
        keys = [f.key for f in self.persona.facts]
        for i, p in enumerate(self.probes):
            if p.fact is not None and p.fact not in keys:
                raise ValueError(f"probes.{i}.fact: {p.fact!r} is not a persona fact (allowed: {', '.join(keys) or 'none'})")
        for i, p in enumerate(self.probes):
            given_away = matched_answers(p.turns[-1], self.expected_for(p))
            if given_away:
                raise ValueError(f"probes.{i}.turns: the question holds its own answer {given_away[0]!r} "
                                 "(an echo would pass)")
        for i, f in enumerate(self.persona.facts):
            given_away = matched_answers(f.question, f.expected)
            if given_away:
                raise ValueError(f"persona.facts.{i}.question: holds its own answer {given_away[0]!r} (an echo would pass)")
        for key in keys:
            if not any(p.fact == key for p in self.probes):
                raise ValueError(f"persona fact {key!r} is asked once only: add a probe with fact: {key} in other words")
        return self

    def fact(self, key: str) -> PersonaFact:
        return next(f for f in self.persona.facts if f.key == key)

    def all_probes(self) -> list[Probe]:
        """The suite's probes, then one probe per fact asking its canonical `question`."""
        derived = [Probe(id=fact_probe_id(f.key), group="fact", turns=[f.question], fact=f.key) for f in self.persona.facts]
        return list(self.probes) + derived

    def expected_for(self, probe: Probe) -> list[str]:
        """What a right final reply to `probe` holds: its fact's answers plus its own."""
        return (self.fact(probe.fact).expected if probe.fact else []) + list(probe.expected)


def fact_probe_id(key: str) -> str:
    return f"fact-{key}"


def load_suite(path: str | Path) -> ProbeSuite:
    """Load and validate a suite; a bad file is one ConfigError line naming the field."""
    return load_config(path, ProbeSuite)
