import pytest

from tune.eval.metrics import mcq_accuracy, normalize_answer, parse_choice, qa_f1, token_f1

OPTIONS = ["배추", "감자", "양파", "당근"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("정답: 3", 3),
        ("정답은 ③번입니다.", 3),
        ("답은 (B)", 2),
        ("정답：３", 3),  # full-width
        ("1번과 2번은 틀렸으므로 정답은 4입니다.", 4),  # the marker wins over stray digits
        ("Answer: C", 3),
        ("The correct answer is option 2 because 1 and 3 are wrong.", 2),
        ("the answer is 2", 2),
        ("**3**", 3),
        ("③", 3),
        ("③ 양파", 3),
        ("3", 3),
        ("B) 감자", 2),
        ("3. 양파", 3),
        ("(3)", 3),
        ("아마도 (4)가 맞을 것 같습니다", 4),
        ("<think>1 or 2? Let me check.</think>\n정답: 2", 2),
        ("정답은 A이지만... 다시 보니 정답은 D입니다", 4),  # a reply that corrects itself
    ],
)
def test_parse_choice_reads_the_answer(text, expected):
    assert parse_choice(text, 4) == expected


@pytest.mark.parametrize(
    "text",
    [
        "잘 모르겠습니다.",
        "",
        "Answer: Copper",  # a word, not the letter C
        "The answer is a bit tricky.",
        "3.5도 정도입니다.",  # a number, not option 3
        "정답: 7",  # out of range for 4 options
        "(1) and (2) both look right",  # ambiguous
        "I think 1 and 2 are both plausible",  # stray digits without a marker
    ],
)
def test_parse_choice_refuses_to_guess(text):
    assert parse_choice(text, 4) is None


def test_parse_choice_by_option_text():
    assert parse_choice('"배추"입니다.', 4, OPTIONS) == 1
    assert parse_choice("양파", 4, OPTIONS) == 3
    assert parse_choice("감자와 당근 중 하나입니다", 4, OPTIONS) is None  # two options named
    assert parse_choice("모르겠어요", 4, OPTIONS) is None


def test_parse_choice_rejects_a_bad_option_count():
    with pytest.raises(ValueError, match="^n_options:"):
        parse_choice("3", 1)


def test_mcq_accuracy_counts_parse_failures_as_wrong():
    items = [{"question": f"q{i}", "options": OPTIONS, "solution": s} for i, s in enumerate([1, 2, 3, 4])]
    replies = ["정답: 1", "Answer: C", "잘 모르겠습니다", "**4**"]
    assert mcq_accuracy(items, replies) == {
        "accuracy": 0.5, "parse_failure_rate": 0.25, "n": 4, "correct": 2, "unparsed": 1,
    }
    with pytest.raises(ValueError, match="^generations: 3 replies for 4 items"):
        mcq_accuracy(items, replies[:3])


def test_normalize_answer_korean_and_english():
    assert normalize_answer("The Han River!") == "han river"
    assert normalize_answer("  An  apple,  a day ") == "apple day"
    assert normalize_answer("「한강」은, 서울을 가로질러 흐른다。") == "한강 은 서울을 가로질러 흐른다"
    assert normalize_answer("１，９４７미터") == "1947미터"  # full-width digits and comma in a number
    assert normalize_answer("…?!·") == ""


def test_token_f1_exact_partial_and_max_over_golds():
    assert token_f1("송편", ["송편"]) == 1.0
    assert token_f1("The 2007", ["2007"]) == 1.0
    # prediction "한라산 높이는 1947미터" vs gold "1947미터": precision 1/3, recall 1 -> F1 0.5
    assert token_f1("한라산 높이는 1,947미터", ["1,947미터"]) == pytest.approx(0.5)
    assert token_f1("6월 말", ["7월", "6월 말"]) == 1.0
    assert token_f1("겨울", ["가을"]) == 0.0


@pytest.mark.parametrize(
    "reply", ["unanswerable", "주어진 글로는 답할 수 없습니다.", "알수 없음", "문맥에 정보가 없습니다", ""]
)
def test_unanswerable_scores_abstention(reply):
    assert token_f1(reply, []) == 1.0


def test_unanswerable_penalises_a_made_up_answer():
    assert token_f1("25도", []) == 0.0


def test_qa_f1_averages_and_counts_unanswerable():
    items = [
        {"context": "c", "question": "q", "answers": ["송편"]},
        {"context": "c", "question": "q", "answers": ["절개와 지조"]},
        {"context": "c", "question": "q", "answers": []},
    ]
    result = qa_f1(items, ["송편", "지조", "알 수 없습니다"])
    # F1s: 1.0, 2 * (1 * 0.5) / 1.5 = 2/3, 1.0
    assert result == {"f1": pytest.approx((1 + 2 / 3 + 1) / 3), "n": 3, "unanswerable_n": 1}
