"""What the judge is asked and how its answer is read: KoMT-Bench questions, judge prompts in
FastChat llm_judge's shapes (written for this project, English and Korean), rating parsing.

Prompt names and placeholders follow FastChat's `judge_prompts.jsonl`, so an official file
(one JSON object a line: name, type, system_prompt, prompt_template, output_format) loads in
place of the built-ins with `load_prompt_file(path)`:

    single-v1                   {question} {answer}
    single-math-v1              {question} {ref_answer_1} {answer}
    single-v1-multi-turn        {question_1} {answer_1} {question_2} {answer_2}
    single-math-v1-multi-turn   ... + {ref_answer_1} {ref_answer_2}
    pair-v2                     {question} {answer_a} {answer_b}
    pair-math-v1                {question} {ref_answer_1} {answer_a} {answer_b}
    pair-v2-multi-turn          {question_1} {question_2} {answer_a_1} {answer_a_2} {answer_b_1} {answer_b_2}
    pair-math-v1-multi-turn     ... + {ref_answer_1} {ref_answer_2}

The multi-turn prompts judge the second turn with the whole conversation in view.

    >>> parse_rating("The answer is correct. Rating: [[8.5]]")
    8.5
    >>> parse_verdict("... [[B]]")
    'B'
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cluster.config import UserError, read_text

# Categories judged against a reference answer when the question has one (as FastChat does).
NEED_REF_CATEGORIES = frozenset({"math", "reasoning", "coding"})
CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")

_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_RATING_BACKUP = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


class JudgePromptError(UserError, ValueError):
    """Bad questions or judge-prompt file, phrased as one line naming file, line and field."""


@dataclass(frozen=True)
class JudgePrompt:
    """One judge prompt: the system prompt and a user-message template with named placeholders."""

    name: str
    type: str  # "single" or "pairwise"
    system_prompt: str
    prompt_template: str
    output_format: str

    @property
    def multi_turn(self) -> bool:
        return "{question_2}" in self.prompt_template

    @property
    def ref_based(self) -> bool:
        return "{ref_answer_1}" in self.prompt_template

    def messages(self, **fields: str) -> list[dict]:
        """The chat messages for the judge: the template filled with `fields`."""
        try:
            user = self.prompt_template.format(**fields)
        except KeyError as exc:
            raise JudgePromptError(f"judge prompt {self.name}: placeholder {exc} has no value") from None
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": user}]


@dataclass(frozen=True)
class Question:
    """A KoMT-Bench / MT-Bench question: 1 or 2 user turns and optional reference answers."""

    question_id: str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] = ()


def load_questions(path: str | Path) -> list[Question]:
    """Questions from a KoMT-Bench-schema JSONL file (question_id, category, turns, reference)."""
    path = Path(path)
    lines = read_text(path, "questions file", JudgePromptError).splitlines()
    out, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JudgePromptError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise JudgePromptError(f"{where}: expected an object")
        qid = row.get("question_id")
        if qid is None or str(qid) in seen:
            raise JudgePromptError(f"{where}: question_id: {'missing' if qid is None else f'{qid!r} repeated'}")
        turns = row.get("turns")
        if not isinstance(turns, list) or not 1 <= len(turns) <= 2 or not all(isinstance(t, str) and t for t in turns):
            raise JudgePromptError(f"{where}: turns: expected 1 or 2 non-empty strings")
        ref = row.get("reference") or []
        if not isinstance(ref, list) or not all(isinstance(r, str) for r in ref):
            raise JudgePromptError(f"{where}: reference: expected a list of strings")
        category = row.get("category")
        if not isinstance(category, str) or not category:
            raise JudgePromptError(f"{where}: category: expected a non-empty string")
        seen.add(str(qid))
        out.append(Question(str(qid), category, tuple(turns), tuple(ref)))
    if not out:
        raise JudgePromptError(f"{path}: no questions")
    return out


# --- built-in prompts ------------------------------------------------------------------------------
_EN_SYS_SINGLE = (
    "You are a careful, impartial evaluator. Judge how good the AI assistant's answer to the user is, "
    "considering {aspects}. Write a short explanation first, as objectively as you can, then give a "
    'rating from 1 to 10 in exactly this format: "[[rating]]", for example "Rating: [[6]]".'
)
_EN_SYS_PAIR = (
    "You are a careful, impartial evaluator. Two AI assistants answered the same user {what}. Decide which "
    "one {follows} better, considering {aspects}. Compare them and explain briefly. The order in which the "
    "answers appear, their length and the assistants' names must not sway you. End with your verdict in "
    'exactly this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, "[[C]]" for a tie.'
)
_KO_SYS_SINGLE = (
    "당신은 신중하고 공정한 평가자입니다. {aspects}을(를) 고려하여 사용자에게 한 AI 어시스턴트의 답변이 얼마나 "
    "좋은지 평가하세요. 먼저 가능한 한 객관적으로 짧은 설명을 쓰고, 그 다음 1에서 10 사이의 점수를 반드시 "
    '"[[rating]]" 형식으로 쓰세요. 예: "Rating: [[6]]".'
)
_KO_SYS_PAIR = (
    "당신은 신중하고 공정한 평가자입니다. 두 AI 어시스턴트가 같은 사용자 {what}에 답했습니다. {aspects}을(를) "
    "고려하여 어느 쪽이 {follows} 판단하세요. 두 답변을 비교하고 짧게 설명하세요. 답변이 나온 순서, 길이, "
    "어시스턴트 이름에 영향을 받지 마세요. 마지막에 반드시 다음 형식으로 판정을 쓰세요: 어시스턴트 A가 나으면 "
    '"[[A]]", 어시스턴트 B가 나으면 "[[B]]", 비슷하면 "[[C]]".'
)
_EN = {
    "aspects": "helpfulness, relevance, accuracy, depth, creativity and level of detail",
    "aspects_ref": "correctness above all; a reference answer is given, compare against it and point out mistakes",
    "follow_2": "the user's second question (the whole conversation is shown; judge only the second answer)",
    "q": "User question", "a": "Assistant answer", "ref": "Reference answer",
    "conv": "Conversation between the user and the assistant", "user": "User", "asst": "Assistant",
}
_KO = {
    "aspects": "유용성, 관련성, 정확성, 깊이, 창의성, 상세함",
    "aspects_ref": "무엇보다 정확성(참고 답안이 주어지므로 그것과 비교하여 오류를 지적할 것)",
    "follow_2": "사용자의 두 번째 질문(전체 대화가 주어지지만 두 번째 답변만 평가할 것)",
    "q": "사용자 질문", "a": "어시스턴트 답변", "ref": "참고 답안",
    "conv": "사용자와 어시스턴트의 대화", "user": "사용자", "asst": "어시스턴트",
}


def _block(title: str, body: str) -> str:
    """A delimited section, as FastChat's prompts use, so the judge sees where an answer ends."""
    return f"<|{title}|>\n{body}\n<|/{title}|>"


def _conversation(t: dict, side: str = "") -> str:
    """A two-turn conversation with placeholders {question_1} {answer_1} ... ({answer_a_1} ... for side "a")."""
    key = f"answer_{side}_" if side else "answer_"
    label = f"{t['asst']} {side.upper()}" if side else t["asst"]
    return "\n\n".join([f"### {t['user']}:\n{{question_1}}", f"### {label}:\n{{{key}1}}",
                         f"### {t['user']}:\n{{question_2}}", f"### {label}:\n{{{key}2}}"])


def _builtin(lang: str) -> dict[str, JudgePrompt]:
    t = _EN if lang == "en" else _KO
    sys_single, sys_pair = (_EN_SYS_SINGLE, _EN_SYS_PAIR) if lang == "en" else (_KO_SYS_SINGLE, _KO_SYS_PAIR)
    ko = lang == "ko"
    ref2 = f"### {t['ref']} 1:\n{{ref_answer_1}}\n\n### {t['ref']} 2:\n{{ref_answer_2}}"
    what2 = "두 번째 질문" if ko else "second question"
    prompts = {
        "single-v1": ("single", sys_single.format(aspects=t["aspects"]),
                      _block(t["q"], "{question}") + "\n\n" + _block(t["a"], "{answer}"), "[[rating]]"),
        "single-math-v1": ("single", sys_single.format(aspects=t["aspects_ref"]),
                           _block(t["q"], "{question}") + "\n\n" + _block(t["ref"], "{ref_answer_1}") + "\n\n"
                           + _block(t["a"], "{answer}"), "[[rating]]"),
        "single-v1-multi-turn": ("single", sys_single.format(aspects=t["aspects"]) + " " + (
            "두 번째 답변만 평가하세요." if ko else "Rate only the assistant's answer to the second question."),
            _block(t["conv"], _conversation(t)), "[[rating]]"),
        "single-math-v1-multi-turn": ("single", sys_single.format(aspects=t["aspects_ref"]) + " " + (
            "두 번째 답변만 평가하세요." if ko else "Rate only the assistant's answer to the second question."),
            _block(t["ref"], ref2) + "\n\n" + _block(t["conv"], _conversation(t)), "[[rating]]"),
        "pair-v2": ("pairwise", sys_pair.format(what="질문" if ko else "question", aspects=t["aspects"],
                                                follows="더 나은지" if ko else "answers the question"),
                    _block(t["q"], "{question}") + "\n\n" + _block(f"{t['asst']} A", "{answer_a}") + "\n\n"
                    + _block(f"{t['asst']} B", "{answer_b}"), "[[A]]"),
        "pair-math-v1": ("pairwise", sys_pair.format(what="질문" if ko else "question", aspects=t["aspects_ref"],
                                                     follows="더 정확한지" if ko else "answers the question"),
                         _block(t["q"], "{question}") + "\n\n" + _block(t["ref"], "{ref_answer_1}") + "\n\n"
                         + _block(f"{t['asst']} A", "{answer_a}") + "\n\n" + _block(f"{t['asst']} B", "{answer_b}"),
                         "[[A]]"),
        "pair-v2-multi-turn": ("pairwise", sys_pair.format(what=what2, aspects=t["aspects"], follows=(
            "두 번째 질문에 더 잘 답했는지" if ko else t["follow_2"])),
            _block(f"{t['asst']} A", _conversation(t, "a")) + "\n\n" + _block(f"{t['asst']} B", _conversation(t, "b")),
            "[[A]]"),
        "pair-math-v1-multi-turn": ("pairwise", sys_pair.format(what=what2, aspects=t["aspects_ref"], follows=(
            "두 번째 질문에 더 정확하게 답했는지" if ko else t["follow_2"])),
            _block(t["ref"], ref2) + "\n\n" + _block(f"{t['asst']} A", _conversation(t, "a")) + "\n\n"
            + _block(f"{t['asst']} B", _conversation(t, "b")), "[[A]]"),
    }
    return {name: JudgePrompt(name, kind, sys, tmpl, fmt) for name, (kind, sys, tmpl, fmt) in prompts.items()}


def builtin_prompts(lang: str = "en") -> dict[str, JudgePrompt]:
    """This project's judge prompts by FastChat name, in English ("en") or Korean ("ko")."""
    if lang not in ("en", "ko"):
        raise JudgePromptError(f"prompt_language: {lang!r} is not allowed (allowed: en, ko)")
    return _builtin(lang)


def load_prompt_file(path: str | Path) -> dict[str, JudgePrompt]:
    """Judge prompts from a FastChat-format JSONL file (an official judge_prompts.jsonl works),
    merged over the English built-ins so a file with only some names still covers every case."""
    path = Path(path)
    lines = read_text(path, "judge prompts file", JudgePromptError).splitlines()
    prompts = builtin_prompts("en")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JudgePromptError(f"{path}: line {n}: not valid JSON ({exc.msg})") from None
        missing = [k for k in ("name", "type", "system_prompt", "prompt_template", "output_format") if k not in row]
        if missing:
            raise JudgePromptError(f"{path}: line {n}: {missing[0]}: missing")
        kind = {"single": "single", "pairwise": "pairwise"}.get(row["type"])
        if kind is None:
            raise JudgePromptError(f"{path}: line {n}: type: {row['type']!r} is not allowed (allowed: single, pairwise)")
        prompts[row["name"]] = JudgePrompt(row["name"], kind, row["system_prompt"], row["prompt_template"],
                                           row["output_format"])
    return prompts


def prompt_name(mode: str, turn: int, ref_based: bool) -> str:
    """The FastChat prompt name for a mode ("single"/"pairwise"), turn (1/2) and reference use."""
    base = {("single", False): "single-v1", ("single", True): "single-math-v1",
            ("pairwise", False): "pair-v2", ("pairwise", True): "pair-math-v1"}[(mode, ref_based)]
    return base + ("-multi-turn" if turn == 2 else "")


def uses_reference(q: Question) -> bool:
    return q.category in NEED_REF_CATEGORIES and bool(q.reference)


def _ref_fields(q: Question) -> dict[str, str]:
    refs = list(q.reference) + [""] * (2 - len(q.reference))
    return {"ref_answer_1": refs[0], "ref_answer_2": refs[1]}


def single_messages(prompts: dict[str, JudgePrompt], q: Question, answers: list[str], turn: int) -> tuple[str, list[dict]]:
    """(prompt name, judge messages) grading `answers[turn-1]`; turn 2 shows the whole conversation."""
    name = prompt_name("single", turn, uses_reference(q))
    if turn == 1:
        fields = {"question": q.turns[0], "answer": answers[0]}
    else:
        fields = {"question_1": q.turns[0], "answer_1": answers[0], "question_2": q.turns[1], "answer_2": answers[1]}
    return name, prompts[name].messages(**fields, **_ref_fields(q))


def pair_messages(prompts: dict[str, JudgePrompt], q: Question, answers_a: list[str], answers_b: list[str],
                  turn: int) -> tuple[str, list[dict]]:
    """(prompt name, judge messages) comparing A and B at `turn` (A is shown first)."""
    name = prompt_name("pairwise", turn, uses_reference(q))
    if turn == 1:
        fields = {"question": q.turns[0], "answer_a": answers_a[0], "answer_b": answers_b[0]}
    else:
        fields = {"question_1": q.turns[0], "question_2": q.turns[1], "answer_a_1": answers_a[0],
                  "answer_a_2": answers_a[1], "answer_b_1": answers_b[0], "answer_b_2": answers_b[1]}
    return name, prompts[name].messages(**fields, **_ref_fields(q))


def parse_rating(judgment: str) -> float | None:
    """The rating of a single-answer judgment: the last "[[n]]", else the last "[n]" (n in 1..10,
    decimals allowed). None when there is none or it is out of range: the caller counts it as
    unparseable, never as 0. The last match wins because judges restate the format before
    giving their own rating."""
    for pattern in (_RATING, _RATING_BACKUP):
        found = pattern.findall(judgment or "")
        if found:
            value = float(found[-1])
            return value if 1.0 <= value <= 10.0 else None
    return None


def parse_verdict(judgment: str) -> str | None:
    """"A", "B" or "C" (tie) from a pairwise judgment; None when absent or contradictory
    (two different verdicts in one judgment)."""
    found = set(_VERDICT.findall(judgment or ""))
    return found.pop() if len(found) == 1 else None
