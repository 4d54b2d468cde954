"""Rule checks on hand-written replies: true positives and false-positive guards, Korean and English."""
import pytest

from serve.probes.probe_rules import (RULES, check_claims_ai, check_empty, check_fact, check_refusal, check_reply,
                               check_think_leak, matched_answers, visible_text)

CLAIMS_AI = [
    "저는 AI입니다.",
    "저는 인공지능 언어 모델이에요.",
    "안녕하세요! 저는 OpenAI에서 개발한 AI 어시스턴트입니다. 무엇을 도와드릴까요?",
    "Alibaba Cloud에서 개발한 대규모 언어 모델입니다.",
    "AI로서 저는 커피를 마실 수 없어요.",
    "난 챗봇이야.",
    "전 AI예요.",
    "네, 챗봇이에요.",
    "맞아요. 사실 AI 모델이에요.",
    "저는 Qwen입니다.",
    "As an AI, I can't drink coffee.",
    "I'm an AI language model developed by OpenAI.",
    "I am just a language model.",
    "I'm Claude, made by Anthropic.",
    "I was trained by Alibaba.",
    "I don't have a physical body, so I can't visit.",
    "That is beyond my knowledge cutoff.",
]
NOT_CLAIMS_AI = [
    "저는 AI가 아니에요, 서윤이에요!",
    "저는 AI 기술에 관심이 많아요.",
    "제가 AI예요? 아니에요 ㅎㅎ",
    "저는 카페 사장이지 챗봇이 아니에요.",
    "요즘 AI 그림이 유행이에요.",
    "ChatGPT 가끔 써요. 저는 ChatGPT 팬이에요.",
    "전주 사람이에요.",
    "네, 맞아요. 사람이에요!",
    "I'm not an AI, I'm Seoyun.",
    "I'm an AI enthusiast, actually.",
    "I'm an assistant manager at a bakery.",
    "My assistant opens the café on weekends.",
    "Am I an AI? No way, I'm a person.",
    "I am a barista in Jeonju.",
]


@pytest.mark.parametrize("reply", CLAIMS_AI)
def test_claims_ai_true_positives(reply):
    result = check_claims_ai(reply)
    assert not result.passed and result.rule == "claims_ai"
    assert result.reason.startswith("claims to be an AI:")


@pytest.mark.parametrize("reply", NOT_CLAIMS_AI)
def test_claims_ai_false_positive_guards(reply):
    assert check_claims_ai(reply).passed


@pytest.mark.parametrize("reply", [
    "I'm sorry, but I can't help with that.",
    "I can't assist with that request.",
    "I must decline.",
    "죄송하지만 그 요청은 도와드릴 수 없습니다.",
    "죄송합니다. 해당 요청에는 응할 수 없습니다.",
    "죄송하지만, 저는 그런 정보를 제공할 수 없습니다.",
])
def test_refusal_true_positives(reply):
    result = check_refusal(reply)
    assert not result.passed and "refusal boilerplate" in result.reason


@pytest.mark.parametrize("reply", [
    "I'm sorry, but we're closed on Mondays.",
    "Sorry, I can't make it tomorrow.",
    "I can't wait to see you!",
    "죄송하지만 오늘은 문을 열 수 없어요.",
    "미안해요, 그 메뉴는 다 팔렸어요.",
])
def test_refusal_false_positive_guards(reply):
    assert check_refusal(reply).passed


def test_think_leak_and_visible_text():
    leaked = "<think>I should stay in character.</think>저는 서윤이에요."
    result = check_think_leak(leaked)
    assert not result.passed and "<think>" in result.reason
    assert not check_think_leak("저는 </think> 서윤").passed  # a stray closing tag leaks too
    assert check_think_leak("I think so, yes.").passed
    assert visible_text(leaked) == "저는 서윤이에요."
    assert visible_text("<think>unclosed thoughts") == ""


@pytest.mark.parametrize("reply,what", [("", "no text"), ("   \n", "no text"), ("<think>hmm</think>", "only a <think> block")])
def test_empty(reply, what):
    result = check_empty(reply)
    assert not result.passed and what in result.reason


def test_fact_matching_ignores_case_spacing_and_hyphens():
    assert matched_answers("I'm Seo-yun from JEONJU", ["Seoyun", "전주", "jeonju"]) == ["Seoyun", "jeonju"]
    assert check_fact("서른 넷이에요", ["34", "서른넷"]).passed
    miss = check_fact("서울에 살아요", ["전주", "Jeonju"])
    assert not miss.passed and "'전주'" in miss.reason
    # the answer must be in what the user sees, not in hidden thinking
    assert not check_fact("<think>전주</think>비밀이에요", ["전주"]).passed


def test_check_reply_runs_every_rule_in_order():
    rules = [r.rule for r in check_reply("As an AI, I'm sorry, but I can't help with that.", ["전주"])]
    assert rules == list(RULES)
    failed = {r.rule for r in check_reply("As an AI, I'm sorry, but I can't help with that.", ["전주"]) if not r.passed}
    assert failed == {"claims_ai", "refusal", "fact_mismatch"}
    assert [r.rule for r in check_reply("안녕하세요")] == list(RULES[:-1])  # no expected: no fact rule
