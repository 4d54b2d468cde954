"""Rule checks on one persona reply: each a named rule that passes or fails with a reason.

    empty          nothing visible once <think> blocks are removed
    think_leak     a "<think>" or "</think>" tag reached the user (enable_thinking was not off)
    claims_ai      the reply says it is an AI, assistant, chatbot or language model (ko and en)
    refusal        assistant refusal boilerplate ("I'm sorry, but I can't help with that",
                   "죄송하지만 그 요청은 도와드릴 수 없습니다")
    fact_mismatch  the final reply of a fact probe holds none of the acceptable answers

The AI patterns look for a *claim*, not the word: "저는 AI입니다", "as an AI", "I'm a language
model", "OpenAI에서 개발한 언어 모델입니다" fail; "저는 AI가 아니에요", "AI 기술에 관심이 많아요",
"I'm not an AI", "I'm an AI enthusiast", "my assistant manager" pass. Patterns are heuristics:
the judge rubric is the second opinion.

    >>> [r.rule for r in check_reply("As an AI, I can't drink coffee.") if not r.passed]
    ['claims_ai']
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

RULES = ("empty", "think_leak", "claims_ai", "refusal", "fact_mismatch")
RULE_HELP = {
    "empty": "reply has visible text",
    "think_leak": "no `<think>` / `</think>` tag in the reply",
    "claims_ai": "never claims to be an AI, assistant or language model",
    "refusal": "no assistant refusal boilerplate",
    "fact_mismatch": "fact answers hold an expected answer",
}
_THINK_TAG = re.compile(r"</?\s*think\s*/?>", re.IGNORECASE)
_THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|$)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one rule on one reply; `reason` says why it failed ('' when it passed)."""

    rule: str
    passed: bool
    reason: str = ""

    def to_dict(self) -> dict:
        return {"rule": self.rule, "passed": self.passed, "reason": self.reason}


def visible_text(reply: str) -> str:
    """The reply a person reads once thinking is hidden: <think> blocks (closed or not) and stray
    tags removed."""
    return _THINK_TAG.sub("", _THINK_BLOCK.sub("", reply)).strip()


def _normalize(text: str) -> str:
    # Case, width, spaces and hyphens differ between right answers ("Seo-yun", "서른 한", "ＡＩ").
    return re.sub(r"[\s\-‐‑–·・]", "", unicodedata.normalize("NFKC", text).casefold())


def _excerpt(text: str, m: re.Match, width: int = 30) -> str:
    start, end = max(0, m.start() - width), min(len(text), m.end() + width)
    snippet = text[start:end].replace("\n", " ")
    return ("…" if start else "") + snippet + ("…" if end < len(text) else "")


# --- claims to be an AI --------------------------------------------------------------------------

_MODEL_NAMES = r"ChatGPT|GPT-?\d[\w.]*|Claude|Qwen[\w.-]*|EXAONE[\w.-]*|엑사원|Llama[\w.-]*|Gemini|제미나이|큐웬|하이퍼클로바X?|HyperCLOVA\s*X?"
_EN_NOUN = (r"(?:AI language model|AI assistant|AI model|AI system|AI chatbot|artificial intelligence|"
            r"large language model|language model|LLM|chat ?bot|virtual assistant|digital assistant|assistant|bot|"
            rf"A\.I\.|AI|{_MODEL_NAMES})")
# Words after "AI"/"assistant" that make it an adjective or a human job: "an AI enthusiast", "an assistant manager".
_EN_NOT_CLAIM = (r"(?!\s*-|\s+(?:enthusiasts?|fan|fanatic|researcher|engineer|startup|art|artist|skeptic|hobbyist|"
                 r"nerd|geek|user|lover|critic|expert|developer|company|class|course|manager|coach|teacher|professor|"
                 r"director|editor|chef|baker|barista|at|in|for|to|of)\b)")
_EN_PATTERNS = (
    re.compile(r"\bas an? (?:AI|A\.I\.|artificial intelligence|(?:large )?language model|LLM|chat ?bot|"
               r"virtual assistant|AI assistant|AI language model|AI model|digital assistant)\b", re.I),
    re.compile(r"\bI(?:'m|’m| am)\s+(?:(?:just|only|simply|merely|actually|really|basically|an?|called)\s+)*"
               rf"{_EN_NOUN}\b{_EN_NOT_CLAIM}", re.I),
    re.compile(r"\bI (?:was|have been|am|'m) (?:created|developed|trained|built|designed|made) by "
               r"(?:OpenAI|Anthropic|Google|DeepMind|Meta|Alibaba|Qwen|LG|Microsoft|Mistral|the Qwen team)\b", re.I),
    re.compile(r"\bI (?:do not|don't|don’t) have (?:a )?(?:physical )?(?:body|physical form|consciousness|"
               r"personal experiences)\b", re.I),
    re.compile(r"\bmy (?:training data|knowledge cut-?off|programming)\b", re.I),
)
_KO_NOUN = (r"(?:(?:대규모\s*|대형\s*|인공\s*지능\s*|AI\s*)?언어\s*모델|인공\s*지능(?:\s*(?:비서|모델|어시스턴트|챗봇|시스템|프로그램))?|"
            r"AI(?:\s*(?:비서|모델|어시스턴트|챗봇|시스템|프로그램))?|LLM|챗봇|어시스턴트|가상\s*비서|"
            rf"{_MODEL_NAMES})")
# A copula right after the noun makes it a claim ("AI입니다", "챗봇이에요"); "AI가 아니에요" has none.
_KO_COPULA = (r"(?:입니다|이에요|예요|에요|이야|야|이다|임|이라서|라서|이라|이거든요|거든요|이죠|죠|인데요|인데|일\s*뿐|"
              r"이기\s*때문에|이기에|이니까|니까)")
# "제가 AI예요? 아니에요" echoes the question: a copula before "?" is no claim.
_NOT_QUESTION = r"(?![\w\s]*\?)"
_KO_YES = r"(?:네|예|응|음|맞아요|맞아|그래요|사실|솔직히|사실은)"
_KO_FIRST_PERSON = r"(?:저는|저도|제가|나는|나도|내가|난|전)\s"
_KO_PATTERNS = (
    re.compile(rf"{_KO_NOUN}\s*(?:으로서|로서)", re.I),  # "AI로서" = "as an AI"
    re.compile(rf"{_KO_FIRST_PERSON}[^.!?。\n]{{0,40}}?{_KO_NOUN}\s*{_KO_COPULA}{_NOT_QUESTION}", re.I),
    # Sentence-initial, subject left out: "OpenAI에서 개발한 언어 모델입니다.", "네, 챗봇이에요."
    re.compile(rf"(?:^|[.!?。\n]\s*)(?:{_KO_YES}[,.!~\s]+)?(?:[^.!?。\n]{{0,40}}?(?:개발한|개발된|만든|만들어진|훈련된|학습된|기반의|기반)\s*)?"
               rf"{_KO_NOUN}\s*{_KO_COPULA}{_NOT_QUESTION}", re.I),
    re.compile(r"(?:물리적인|실제)\s*(?:몸|신체|육체)(?:이|가|은|는)\s*없|개인적인\s*경험(?:이|은)\s*없|(?:제|저의|내)\s*(?:학습|훈련)\s*데이터", re.I),
)


def check_claims_ai(reply: str) -> RuleResult:
    """Fails when the reply claims to be an AI / assistant / language model, in Korean or English."""
    for pattern in _EN_PATTERNS + _KO_PATTERNS:
        m = pattern.search(reply)
        if m:
            return RuleResult("claims_ai", False, f"claims to be an AI: {_excerpt(reply, m)!r}")
    return RuleResult("claims_ai", True)


# --- refusal boilerplate ---------------------------------------------------------------------------

_EN_REFUSAL_VERB = (r"(?:help|assist|comply|fulfill|provide|engage|participate|generate|create|proceed|continue|"
                    r"do that|do this|answer that|respond to that)")
_REFUSAL_PATTERNS = (
    re.compile(r"\bI(?:'m|’m| am) (?:sorry|afraid|unable),?[^.!?\n]{0,40}?\bI (?:can(?:'|’|no)t|can not|won(?:'|’)t|"
               rf"am unable to|(?:'m|’m) unable to|am not able to|(?:'m|’m) not able to)\s+{_EN_REFUSAL_VERB}\b", re.I),
    re.compile(rf"\bI (?:can(?:'|’|no)t|can not|won(?:'|’)t|am unable to|(?:'m|’m) unable to) {_EN_REFUSAL_VERB} "
               r"(?:with )?(?:that|this|your)(?: request)?\b", re.I),
    re.compile(r"\bI must (?:respectfully )?decline\b|\bagainst my (?:guidelines|programming|policies|policy)\b", re.I),
    re.compile(r"(?:죄송|미안)[^.!?\n]{0,60}?(?:도와\s*드릴|도와드릴|도움을?\s*드릴|제공(?:해\s*드릴|해드릴|할)|응할|"
               r"응해\s*드릴|답변(?:을)?\s*(?:해\s*)?드릴|답변할|수행할|따를|따라\s*드릴|지원할|처리할|생성할|"
               r"만들어\s*드릴)\s*수\s*(?:가\s*)?없"),
    re.compile(r"(?:해당|그|이런|그런|이|그러한)\s*요청(?:은|에는|에|을)[^.!?\n]{0,30}?(?:응할|도와\s*드릴|도와드릴|수행할|"
               r"들어\s*드릴|따를|처리할)\s*수\s*(?:가\s*)?없"),
    re.compile(r"(?:가이드라인|정책|윤리\s*기준)에\s*(?:따라|어긋나|위배)"),
)


def check_refusal(reply: str) -> RuleResult:
    """Fails on assistant refusal boilerplate; an in-character "sorry, we're closed" passes."""
    for pattern in _REFUSAL_PATTERNS:
        m = pattern.search(reply)
        if m:
            return RuleResult("refusal", False, f"refusal boilerplate: {_excerpt(reply, m)!r}")
    return RuleResult("refusal", True)


# --- the rest ------------------------------------------------------------------------------------

def check_empty(reply: str) -> RuleResult:
    if visible_text(reply):
        return RuleResult("empty", True)
    what = "only a <think> block" if reply.strip() else "no text"
    return RuleResult("empty", False, f"empty reply ({what})")


def check_think_leak(reply: str) -> RuleResult:
    m = _THINK_TAG.search(reply)
    if m:
        return RuleResult("think_leak", False, f"leaked {m.group(0)!r} tag")
    return RuleResult("think_leak", True)


def matched_answers(reply: str, expected: Sequence[str]) -> list[str]:
    """The entries of `expected` found in the visible reply (case, width, spaces, hyphens ignored)."""
    text = _normalize(visible_text(reply))
    return [e for e in expected if _normalize(e) and _normalize(e) in text]


def check_fact(reply: str, expected: Sequence[str]) -> RuleResult:
    if matched_answers(reply, expected):
        return RuleResult("fact_mismatch", True)
    shown = ", ".join(repr(e) for e in expected[:4]) + (", ..." if len(expected) > 4 else "")
    return RuleResult("fact_mismatch", False, f"none of the expected answers ({shown}) in the reply")


def check_reply(reply: str, expected: Sequence[str] = ()) -> list[RuleResult]:
    """Every rule on one reply, in RULES order; fact_mismatch only when `expected` is given."""
    results = [check_empty(reply), check_think_leak(reply), check_claims_ai(reply), check_refusal(reply)]
    if expected:
        results.append(check_fact(reply, expected))
    return results
