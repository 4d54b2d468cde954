"""Benchmark metrics on generated text: MCQ accuracy (KMMLU-Pro / KMMLU-Redux schema) and QA token F1
(Ko-LongRAG schema).

MCQ items are mappings `{question, options: list[str], solution: 1-indexed int}`; QA items are
`{context, question, answers: list[str]}`, where `answers == []` marks an unanswerable question.

    >>> parse_choice("정답은 ③번입니다.", 4), parse_choice("Answer: C", 4), parse_choice("잘 모르겠어요", 4)
    (3, 3, None)
    >>> round(token_f1("The Han River", ["han river flows"]), 3)
    0.8
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence

_MAX_OPTIONS = 20  # circled numbers go up to ⑳

# One choice: "(3)", "[B]", "3", "B". Circled numbers are rewritten to "(n)" before matching.
# A digit must not continue as a number ("35", "3.5"); a capital letter must not start a word.
_CHOICE = (
    r"(?:[(\[]\s*(?P<br>[A-Ta-t]|\d{1,2})\s*[)\]]"
    r"|(?P<d>\d{1,2})(?!\d)(?!\.\d)"
    r"|(?P<l>[A-T])(?![A-Za-z]))"
)
# "정답: 3", "답은 (B)", "Answer: C", "the correct answer is option 2", "final answer is B".
_MARKER = re.compile(
    r"(?:정답|답|(?i:\banswer\b))"
    r"\s*(?:은|는|이|(?i:is|was|would\s+be|should\s+be))?\s*[:=]?\s*(?:바로\s*)?"
    r"(?:(?i:option|choice)|보기|선택지)?\s*" + _CHOICE
)
_BOLD = re.compile(r"\*\*\s*" + _CHOICE + r"\s*(?:번)?\s*[.)]?\s*\*\*")
# A choice opening the reply: "3", "3.", "B)", "3번 서울". Bracketed ones are left to _BRACKETED,
# which refuses "(1) and (2)".
_START = re.compile(
    r"^\s*(?:(?P<d>\d{1,2})\s*(?:[.):번](?!\d)|$)"
    r"|(?P<l>[A-T])\s*(?:[.):]|$))"
)
_BRACKETED = re.compile(r"[(\[]\s*(?P<br>[A-Ta-t]|\d{1,2})\s*[)\]]")
_CIRCLED = re.compile("[\u2460-\u2473]")  # ① .. ⑳


def strip_reasoning(text: str) -> str:
    """The reply after a reasoning block: EXAONE-4 / Qwen3 put their thoughts in `<think>...</think>`."""
    return text.rsplit("</think>", 1)[-1] if "</think>" in text else text


def _clean(text: str) -> str:
    text = _CIRCLED.sub(lambda m: f"({ord(m.group()) - 0x245F})", strip_reasoning(text))
    return unicodedata.normalize("NFKC", text)  # full-width "：３" -> ":3"


def _value(match: re.Match, n_options: int) -> int | None:
    groups = match.groupdict()
    token = groups.get("br") or groups.get("d") or groups.get("l")
    value = int(token) if token.isdigit() else ord(token.upper()) - ord("A") + 1
    return value if 1 <= value <= n_options else None


def _option_in(text: str, options: Sequence[str]) -> int | None:
    """The one option whose text the reply states; None when none or several do."""
    def squash(s: str) -> str:
        return re.sub(r"[\s\"'“”‘’「」『』.,!?。]+", "", s).lower()

    reply = squash(text)
    texts = [squash(o) for o in options]
    exact = [i for i, t in enumerate(texts) if t and t == reply]
    if len(exact) == 1:
        return exact[0] + 1
    found = [i for i, t in enumerate(texts) if len(t) >= 2 and t in reply]
    # An option contained in another found option ("서울" in "서울역") is not a second answer.
    found = [i for i in found if not any(j != i and texts[i] in texts[j] for j in found)]
    return found[0] + 1 if len(found) == 1 else None


def parse_choice(text: str, n_options: int, options: Sequence[str] | None = None) -> int | None:
    """The 1-indexed option a generated reply chooses, or None when it cannot be read (never a guess).

    In order: the last explicit marker ("정답: 3", "답은 (B)", "Answer: C", "the answer is 2"); a bold
    choice ("**3**"); a choice opening the reply ("3.", "B)", "③ ..."); a single bracketed or circled
    choice anywhere ("(3)"); the text of exactly one option, when `options` are given. Digits, capital
    letters (A = 1) and circled numbers are read; a value outside 1..n_options is not a choice."""
    if not 2 <= n_options <= _MAX_OPTIONS:
        raise ValueError(f"n_options: expected 2..{_MAX_OPTIONS}, got {n_options}")
    text = _clean(text or "")
    for pattern in (_MARKER, _BOLD):
        values = [v for m in pattern.finditer(text) if (v := _value(m, n_options))]
        if values:
            return values[-1]  # a reply that corrects itself ends with its final answer
    plain = text.replace("*", "").replace("`", "")
    start = _START.match(plain)
    if start and (value := _value(start, n_options)):
        return value
    bracketed = {v for m in _BRACKETED.finditer(plain) if (v := _value(m, n_options))}
    if len(bracketed) == 1:
        return bracketed.pop()
    return _option_in(plain, options) if options else None


def _items_and_generations(items: Sequence, generations: Sequence[str]) -> None:
    if len(items) != len(generations):
        raise ValueError(f"generations: {len(generations)} replies for {len(items)} items")
    if not items:
        raise ValueError("items: no items to score")


def mcq_accuracy(items: Sequence[Mapping], generations: Sequence[str]) -> dict:
    """Accuracy over MCQ items; an unparseable reply counts as wrong and as a parse failure.

    Returns {accuracy, parse_failure_rate, n, correct, unparsed}."""
    _items_and_generations(items, generations)
    correct = unparsed = 0
    for item, reply in zip(items, generations):
        choice = parse_choice(reply, len(item["options"]), item["options"])
        unparsed += choice is None
        correct += choice == item["solution"]
    n = len(items)
    return {
        "accuracy": correct / n, "parse_failure_rate": unparsed / n, "n": n, "correct": correct, "unparsed": unparsed,
    }


# Phrases that decline to answer; compared with all whitespace removed ("답할수없" == "답할 수 없").
_ABSTAIN = (
    "unanswerable", "cannotbeanswered", "cannotanswer", "can'tanswer", "notanswerable", "noanswer",
    "notmentioned", "notenoughinformation", "insufficientinformation", "doesnotsay", "unknown",
    "답할수없", "답변할수없", "알수없", "정보가없", "언급되지않", "나와있지않", "찾을수없", "확인할수없",
)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation (ASCII, CJK and Korean), English articles and extra whitespace.

    Hangul syllables are kept as they are; Korean particles are not stripped (token F1 as in SQuAD)."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # "1,000" is one number
    # Unicode punctuation and symbols cover CJK and Korean marks (「」。·…) as well as ASCII.
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def abstains(prediction: str) -> bool:
    """Whether a reply declines to answer (empty, "unanswerable", "알 수 없습니다", ...)."""
    squashed = re.sub(r"\s+", "", unicodedata.normalize("NFKC", strip_reasoning(prediction or "")).lower())
    return not normalize_answer(squashed) or any(p in squashed for p in _ABSTAIN)


def _f1(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    if not prediction_tokens or not gold_tokens:
        return float(prediction_tokens == gold_tokens)
    same = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def is_unanswerable(gold_answers: Sequence[str]) -> bool:
    """No gold answer (or only empty ones) marks an unanswerable item."""
    return not any(normalize_answer(g) for g in gold_answers)


def token_f1(prediction: str, gold_answers: Sequence[str]) -> float:
    """SQuAD-style token F1, max over the gold answers.

    For an unanswerable item (`gold_answers` empty) the score is 1.0 when the reply abstains, else 0.0."""
    prediction = strip_reasoning(prediction or "")
    if is_unanswerable(gold_answers):
        return 1.0 if abstains(prediction) else 0.0
    tokens = normalize_answer(prediction).split()
    return max(_f1(tokens, normalize_answer(g).split()) for g in gold_answers)


def qa_f1(items: Sequence[Mapping], generations: Sequence[str]) -> dict:
    """Mean token F1 over QA items. Returns {f1, n, unanswerable_n}."""
    _items_and_generations(items, generations)
    scores = [token_f1(reply, item["answers"]) for item, reply in zip(items, generations)]
    unanswerable_n = sum(is_unanswerable(item["answers"]) for item in items)
    return {"f1": sum(scores) / len(scores), "n": len(scores), "unanswerable_n": unanswerable_n}
