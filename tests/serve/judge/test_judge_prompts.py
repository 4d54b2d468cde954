"""serve/judge/judge_prompts.py: KoMT-Bench questions, judge prompts (built-in English/Korean, or a
FastChat judge_prompts.jsonl), rendering them for a question's turn, and reading the judge's
rating or verdict."""
import json

import pytest

from serve.judge.judge_prompts import (JudgePrompt, JudgePromptError, Question, builtin_prompts, load_prompt_file,
                                 load_questions, pair_messages, parse_rating, parse_verdict, prompt_name,
                                 single_messages)

KO_Q = Question("k1", "writing", ("서울의 봄에 대해 짧은 글을 써 주세요.", "그 글을 두 문장으로 줄여 주세요."))
MATH_Q = Question("m1", "math", ("What is 6 times 7?", "And divided by 2?"), ("42", "21"))


@pytest.mark.parametrize("text, rating", [
    ("Good answer. Rating: [[8]]", 8.0),
    ("Format is [[rating]]. Rating: [[7.5]]", 7.5),
    ("Score [6] out of 10", 6.0),  # the single-bracket backup
    ("first [[3]] then really [[9]]", 9.0),
    ("no rating here", None),
    ("Rating: [[0]]", None),
    ("Rating: [[11]]", None),
    ("", None),
])
def test_parse_rating(text, rating):
    assert parse_rating(text) == rating


@pytest.mark.parametrize("text, verdict", [("A wins: [[A]]", "A"), ("[[ C ]]", "C"), ("[[A]] no, [[B]]", None),
                                           ("A is better", None)])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_second_turn_judging_shows_the_whole_conversation_and_math_uses_the_reference():
    prompts = builtin_prompts("en")
    name, msgs = single_messages(prompts, MATH_Q, ["It is 42.", "It is 21."], 2)
    user = msgs[-1]["content"]
    assert name == "single-math-v1-multi-turn" and msgs[0]["role"] == "system"
    for part in ("What is 6 times 7?", "It is 42.", "And divided by 2?", "It is 21.", "42", "21"):
        assert part in user
    assert user.index("What is 6 times 7?") < user.index("It is 42.") < user.index("And divided by 2?")
    name, msgs = single_messages(prompts, KO_Q, ["가", "나"], 1)
    assert name == "single-v1" and "Reference" not in msgs[-1]["content"]
    name, msgs = single_messages(builtin_prompts("ko"), MATH_Q, ["42", "21"], 1)
    assert name == "single-math-v1" and "참고 답안" in msgs[-1]["content"] and "[[rating]]" in msgs[0]["content"]
    name, msgs = pair_messages(prompts, MATH_Q, ["A1", "A2"], ["B1", "B2"], 2)
    assert name == "pair-math-v1-multi-turn" and msgs[-1]["content"].index("A2") < msgs[-1]["content"].index("B2")


def test_official_prompt_file_loads_and_bad_ones_are_named(tmp_path):
    path = tmp_path / "judge_prompts.jsonl"
    row = {"name": "single-v1", "type": "single", "system_prompt": "Be fair.",
           "prompt_template": "Q: {question}\nA: {answer}\nGive [[rating]].", "output_format": "[[rating]]"}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    prompts = load_prompt_file(path)
    _, msgs = single_messages(prompts, KO_Q, ["답"], 1)
    assert msgs == [{"role": "system", "content": "Be fair."},
                    {"role": "user", "content": f"Q: {KO_Q.turns[0]}\nA: 답\nGive [[rating]]."}]
    assert "pair-v2" in prompts  # names the file lacks fall back to the built-ins
    path.write_text(json.dumps({k: v for k, v in row.items() if k != "type"}) + "\n", encoding="utf-8")
    with pytest.raises(JudgePromptError, match=r"judge_prompts.jsonl: line 1: type: missing"):
        load_prompt_file(path)


def test_questions_file_bad_input_is_one_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "category": "math", "turns": []}\n', encoding="utf-8")
    with pytest.raises(JudgePromptError, match=r"q.jsonl: line 1: turns: expected 1 or 2 non-empty strings"):
        load_questions(path)
    assert len(load_questions("configs/komt_sample.jsonl")) == 16


def test_builtins_cover_every_fastchat_name_in_both_languages():
    names = {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn",
             "pair-v2", "pair-math-v1", "pair-v2-multi-turn", "pair-math-v1-multi-turn"}
    for lang in ("en", "ko"):
        prompts = builtin_prompts(lang)
        assert set(prompts) == names
        for name, p in prompts.items():
            assert p.type == ("single" if name.startswith("single") else "pairwise")
            assert p.multi_turn == name.endswith("multi-turn") and p.ref_based == ("math" in name)
    with pytest.raises(JudgePromptError, match=r"^prompt_language: 'fr' is not allowed \(allowed: en, ko\)$"):
        builtin_prompts("fr")


@pytest.mark.parametrize("mode, turn, ref, name", [
    ("single", 1, False, "single-v1"), ("single", 2, True, "single-math-v1-multi-turn"),
    ("pairwise", 1, True, "pair-math-v1"), ("pairwise", 2, False, "pair-v2-multi-turn"),
])
def test_prompt_name(mode, turn, ref, name):
    assert prompt_name(mode, turn, ref) == name


def test_a_reference_is_used_only_for_reference_categories_that_have_one():
    writing_with_ref = Question("w", "writing", ("Write.",), ("a model essay",))
    math_without_ref = Question("m", "math", ("2+2?",))
    assert single_messages(builtin_prompts(), writing_with_ref, ["ok"], 1)[0] == "single-v1"
    assert single_messages(builtin_prompts(), math_without_ref, ["4"], 1)[0] == "single-v1"
    assert pair_messages(builtin_prompts(), MATH_Q, ["42"], ["41"], 1)[0] == "pair-math-v1"


def test_a_placeholder_without_value_names_the_prompt():
    prompt = JudgePrompt("mine", "single", "", "Q: {question} A: {answer}", "[[rating]]")
    assert prompt.messages(question="q", answer="a") == [{"role": "user", "content": "Q: q A: a"}]  # no system
    with pytest.raises(JudgePromptError, match=r"judge prompt mine: placeholder 'answer' has no value"):
        prompt.messages(question="q")


@pytest.mark.parametrize("row, match", [
    ("not json", r"line 1: not valid JSON"),
    ('{"question_id": 1, "category": "math", "turns": ["a", "b", "c"]}', r"line 1: turns: expected 1 or 2"),
    ('{"category": "math", "turns": ["a"]}', r"line 1: question_id: missing"),
    ('{"question_id": 1, "category": "", "turns": ["a"]}', r"line 1: category: expected a non-empty string"),
    ('{"question_id": 1, "category": "math", "turns": ["a"], "reference": "42"}', r"line 1: reference: expected a list"),
    ('[1, 2]', r"line 1: expected an object"),
])
def test_questions_file_errors_name_line_and_field(tmp_path, row, match):
    path = tmp_path / "q.jsonl"
    path.write_text(row + "\n", encoding="utf-8")
    with pytest.raises(JudgePromptError, match=match):
        load_questions(path)


def test_questions_repeated_ids_blank_lines_and_empty_files(tmp_path):
    path = tmp_path / "q.jsonl"
    row = {"question_id": 7, "category": "math", "turns": ["2+2?"], "reference": ["4"]}
    path.write_text(json.dumps(row) + "\n\n", encoding="utf-8")
    assert load_questions(path) == [Question("7", "math", ("2+2?",), ("4",))]
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(JudgePromptError, match=r"line 2: question_id: 7 repeated"):
        load_questions(path)
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(JudgePromptError, match=r"q.jsonl: no questions"):
        load_questions(path)


def test_prompt_file_with_an_unknown_type_names_line_and_field(tmp_path):
    path = tmp_path / "p.jsonl"
    row = {"name": "x", "type": "ranking", "system_prompt": "", "prompt_template": "{question}", "output_format": ""}
    path.write_text("\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(JudgePromptError, match=r"p.jsonl: line 2: type: 'ranking' is not allowed"):
        load_prompt_file(path)
