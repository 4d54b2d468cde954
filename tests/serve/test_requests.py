"""serve/requests.py: request bodies checked against the server's limits; every refusal is a
BadRequest naming the field, answered as an OpenAI-style error body."""
import json

import pytest

from serve.config import LimitsConfig
from serve.requests import (MAX_SEED, BadRequest, check_origin, error_body, json_depth_exceeds, parse_chat,
                            parse_completion)

LIMITS = LimitsConfig(max_tokens=64)
USER = [{"role": "user", "content": "hi"}]


def refused(fn, *args):
    with pytest.raises(BadRequest) as e:
        fn(*args)
    return e.value


def test_a_plain_chat_gets_the_defaults():
    out = parse_chat({"messages": USER}, LIMITS)
    assert out == {"max_tokens": 64, "temperature": 1.0, "top_p": 1.0, "stop": [], "seed": None, "stream": False,
                   "messages": USER, "chat_template_kwargs": {}}


def test_chat_content_parts_are_joined_and_roles_checked():
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    assert parse_chat({"messages": [{"role": "user", "content": parts}]}, LIMITS)["messages"][0]["content"] == "Hello"
    err = refused(parse_chat, {"messages": [{"role": "tool", "content": "x"}]}, LIMITS)
    assert (err.status, err.param) == (400, "messages") and "messages.0.role: 'tool' is not one of" in err.message
    err = refused(parse_chat, {"messages": [USER[0], {"role": "user", "content": [{"type": "image_url"}]}]}, LIMITS)
    assert err.message == "messages.1.content: expected a string or a list of text parts"
    for bad in (None, [], "hi", [["user", "hi"]]):
        assert refused(parse_chat, {"messages": bad}, LIMITS).param == "messages"


@pytest.mark.parametrize("extra, param, text", [
    ({"max_tokens": 65}, "max_tokens", "max_tokens: 65 is over this server's limit of 64"),
    ({"max_completion_tokens": 0}, "max_tokens", "max_tokens: 0 is not a positive integer"),
    ({"max_tokens": True}, "max_tokens", "max_tokens: True is not a positive integer"),
    ({"temperature": 2.5}, "temperature", "temperature: 2.5 is not a number in [0.0, 2.0]"),
    ({"temperature": "hot"}, "temperature", "temperature: 'hot' is not a number"),
    ({"top_p": 0}, "top_p", "top_p: 0 is not a number in (0.0, 1.0]"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "stop: expected a string or a list of up to 4 strings"),
    ({"stop": [1]}, "stop", "stop: expected a string"),
    ({"n": 2}, "n", "n: 2: only n=1 is supported"),
    ({"seed": -1}, "seed", "seed: -1 is not an integer in [0, "),
    ({"seed": MAX_SEED + 1}, "seed", "is not an integer in [0, "),
    ({"stream": "yes"}, "stream", "stream: 'yes' is not a boolean"),
])
def test_sampling_fields_out_of_range_name_the_field(extra, param, text):
    err = refused(parse_chat, {"messages": USER, **extra}, LIMITS)
    assert (err.status, err.param, err.code) == (400, param, "invalid_value")
    assert text in err.message


def test_sampling_fields_in_range_pass_through():
    out = parse_chat({"messages": USER, "max_completion_tokens": 8, "temperature": 0, "top_p": 0.5, "stop": "\n",
                      "seed": MAX_SEED, "stream": True}, LIMITS)
    assert (out["max_tokens"], out["temperature"], out["top_p"], out["stop"], out["seed"], out["stream"]) == (
        8, 0.0, 0.5, ["\n"], MAX_SEED, True)


def test_chat_template_kwargs_only_the_offered_ones_and_no_structures():
    out = parse_chat({"messages": USER, "chat_template_kwargs": {"enable_thinking": False}}, LIMITS)
    assert out["chat_template_kwargs"] == {"enable_thinking": False}
    err = refused(parse_chat, {"messages": USER, "chat_template_kwargs": {"chat_template": "{{ x }}"}}, LIMITS)
    assert err.message == ("chat_template_kwargs.chat_template: not an option this server offers "
                           "(allowed: enable_thinking)")
    err = refused(parse_chat, {"messages": USER, "chat_template_kwargs": {"enable_thinking": "x" * 65}}, LIMITS)
    assert err.param == "chat_template_kwargs" and "short string" in err.message
    assert refused(parse_chat, {"messages": USER, "chat_template_kwargs": ["x"]}, LIMITS).param == "chat_template_kwargs"
    none = LimitsConfig(chat_template_kwargs=[])
    assert "(allowed: none)" in refused(parse_chat, {"messages": USER, "chat_template_kwargs": {"a": 1}}, none).message


def test_completions_default_to_16_tokens_and_take_one_prompt():
    out = parse_completion({"prompt": ["Once upon"]}, LIMITS)
    assert out["prompt"] == "Once upon" and out["max_tokens"] == 16
    assert parse_completion({"prompt": "x"}, LimitsConfig(max_tokens=4))["max_tokens"] == 4  # capped by the limit
    for bad in (None, ["a", "b"], [1], 5):
        err = refused(parse_completion, {"prompt": bad}, LIMITS)
        assert err.param == "prompt" and err.message == "prompt: expected a string (or a list of one string)"


def test_json_depth():
    assert not json_depth_exceeds({"a": [1, {"b": 2}]}, 3)
    assert json_depth_exceeds({"a": [1, {"b": [3]}]}, 3)
    assert not json_depth_exceeds("plain", 1)
    deep = []
    for _ in range(100_000):  # far past the recursion limit: checked without recursing
        deep = [deep]
    assert json_depth_exceeds(deep, 32)


@pytest.mark.parametrize("origin", [None, "", "http://localhost:3000", "http://127.0.0.1", "http://[::1]:8000"])
def test_local_or_absent_origins_pass_without_a_key(origin):
    check_origin(None, origin)


def test_other_origins_need_a_key():
    err = refused(check_origin, None, "https://evil.example")
    assert (err.status, err.code) == (403, "forbidden_origin") and "only local pages" in err.message
    check_origin("secret", "https://evil.example")  # with a key, the key decides


@pytest.mark.parametrize("status, kind", [(400, "invalid_request_error"), (401, "authentication_error"),
                                          (403, "permission_error"), (404, "invalid_request_error"),
                                          (413, "invalid_request_error"), (429, "rate_limit_error"),
                                          (503, "server_error")])
def test_error_bodies_are_openai_shaped(status, kind):
    resp = BadRequest(status, "no", "model", "some_code").response()
    assert resp.status_code == status
    assert json.loads(resp.body) == {"error": {"message": "no", "type": kind, "param": "model", "code": "some_code"}}
    assert json.loads(error_body(status, "m").body)["error"]["param"] is None
