"""ChatClient against a real HTTP server (the ReplayServer): retries, Retry-After, 4xx, cache,
bounded concurrency. The server replays recorded replies because a real judge model cannot run
on this CPU machine; the HTTP, status codes and headers are real."""
import time

import pytest

from cluster.store.storage import open_store
from serve.client import ChatClient, ChatError, ResponseCache, cache_key
from serve.judge.replay import ReplayServer

MSG = [{"role": "user", "content": "hello judge"}]


def test_chat_returns_the_recorded_text_and_usage():
    with ReplayServer([{"match": "hello", "content": "hi there [[7]]"}]) as srv:
        reply = ChatClient(srv.url, "m").chat(MSG, temperature=0)
    assert reply.text == "hi there [[7]]" and reply.attempts == 1 and not reply.cached
    assert reply.usage["completion_tokens"] == 3
    assert srv.requests[0]["body"]["temperature"] == 0 and srv.requests[0]["model"] == "m"


def test_429_with_retry_after_is_retried_and_the_wait_honoured():
    script = [{"match": None, "status": 429, "retry_after": 0.3, "times": 2}, {"match": None, "content": "ok [[8]]"}]
    with ReplayServer(script) as srv:
        start = time.monotonic()
        reply = ChatClient(srv.url, "m", backoff_s=0.01).chat(MSG)
        elapsed_s = time.monotonic() - start
    assert reply.text == "ok [[8]]" and reply.attempts == 3
    assert [r["status"] for r in srv.requests] == [429, 429, 200]
    assert elapsed_s >= 0.6  # two Retry-After waits of 0.3 s, although backoff_s alone is 0.01


def test_5xx_retries_then_gives_up_with_one_line():
    with ReplayServer([{"match": None, "status": 500, "content": "boom"}]) as srv:
        with pytest.raises(ChatError) as err:
            ChatClient(srv.url, "m", max_retries=2, backoff_s=0.01).chat(MSG)
    assert len(srv.requests) == 3
    assert "gave up after 3 attempts" in str(err.value) and "HTTP 500: boom" in str(err.value)
    assert "\n" not in str(err.value)


def test_400_fails_at_once():
    with ReplayServer([{"match": None, "status": 400, "content": "max_tokens too large"}]) as srv:
        with pytest.raises(ChatError, match=r"HTTP 400: max_tokens too large$"):
            ChatClient(srv.url, "m", backoff_s=0.01).chat(MSG)
    assert len(srv.requests) == 1


def test_connection_refused_is_retried_then_reported():
    with ReplayServer() as srv:
        url = srv.url
    client = ChatClient(url, "m", max_retries=1, backoff_s=0.01)
    with pytest.raises(ChatError, match="gave up after 2 attempts; last: ConnectError"):
        client.chat(MSG)
    assert client.requests_sent == 2


def test_malformed_200_body_is_an_error_naming_it():
    with ReplayServer([{"match": None, "status": 200, "raw": "<html>oops</html>"}]) as srv:
        with pytest.raises(ChatError, match="HTTP 200 but not a chat completion: '<html>oops</html>'"):
            ChatClient(srv.url, "m").chat(MSG)


def test_cache_makes_a_rerun_free_and_ignores_the_url(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    with ReplayServer() as first, ReplayServer() as second:
        a = ChatClient(first.url, "judge", cache=cache).chat(MSG, temperature=0)
        b = ChatClient(second.url, "judge", cache=cache).chat(MSG, temperature=0)
        c = ChatClient(second.url, "judge", cache=cache).chat(MSG, temperature=0.5)  # other params: a miss
    assert (len(first.requests), len(second.requests)) == (1, 1)
    assert b.cached and b.attempts == 0 and b.text == a.text and not c.cached
    assert len(cache) == 2
    assert cache_key("judge", MSG, {"temperature": 0}) != cache_key("other", MSG, {"temperature": 0})


def test_cache_keeps_only_replies_the_predicate_accepts(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    rated = lambda text: "[[" in text  # noqa: E731
    script = [{"match": "hello", "content": "I cannot decide.", "times": 2}, {"match": "hello", "content": "ok [[7]]"}]
    with ReplayServer(script) as srv:
        client = ChatClient(srv.url, "judge", cache=cache)
        first = client.chat(MSG, keep=rated)
        assert first.text == "I cannot decide." and len(cache) == 0  # returned, not stored
        second = client.chat(MSG, keep=rated)  # asked again: nothing was cached
        third = client.chat(MSG, keep=rated)
        [fourth] = client.chat_many([MSG], keep=rated)
    assert not second.cached and third.text == "ok [[7]]" and not third.cached
    assert fourth.cached and fourth.text == "ok [[7]]" and len(srv.requests) == 3 and len(cache) == 1


def test_a_cached_reply_the_predicate_rejects_is_a_miss(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    script = [{"match": "hello", "content": "no rating", "times": 1}, {"match": "hello", "content": "[[5]]"}]
    with ReplayServer(script) as srv:
        ChatClient(srv.url, "judge", cache=cache).chat(MSG)  # no predicate: stored (a cache of older runs)
        again = ChatClient(srv.url, "judge", cache=cache).chat(MSG, keep=lambda text: "[[" in text)
    assert not again.cached and again.text == "[[5]]" and len(srv.requests) == 2
    assert srv.requests[1]["body"].get("keep") is None  # the predicate is not a request parameter
    assert cache.get(cache_key("judge", MSG, {}))["text"] == "[[5]]"  # the useful reply replaced it


def test_cache_in_the_store_state_area(tmp_path):
    store = open_store(str(tmp_path / "store"))
    with ReplayServer() as srv:
        ChatClient(srv.url, "j", cache=ResponseCache(store, "j")).chat(MSG)
        again = ChatClient(srv.url, "j", cache=ResponseCache(store, "j")).chat(MSG)
    assert again.cached and len(srv.requests) == 1
    assert any(k.startswith("chat-cache/j/") for k in store.list_state("chat-cache/"))


def test_chat_many_keeps_order_and_bounds_concurrency():
    recs = [{"match": f"q{i}", "content": f"a{i}", "delay_s": 0.1} for i in range(8)]
    with ReplayServer(recs) as srv:
        replies = ChatClient(srv.url, "m", max_concurrency=2).chat_many(
            [[{"role": "user", "content": f"q{i}"}] for i in range(8)])
    assert [r.text for r in replies] == [f"a{i}" for i in range(8)]
    assert srv.max_in_flight == 2


def test_chat_many_can_return_errors_in_place():
    recs = [{"match": "bad", "status": 404, "content": "no such model"}, {"match": None, "content": "fine"}]
    with ReplayServer(recs) as srv:
        out = ChatClient(srv.url, "m").chat_many([MSG, [{"role": "user", "content": "bad"}]], return_errors=True)
    assert out[0].text == "fine" and isinstance(out[1], ChatError) and "HTTP 404" in str(out[1])


def test_api_key_from_env_is_sent_and_a_missing_one_is_named(monkeypatch):
    monkeypatch.setenv("YARD_TEST_JUDGE_KEY", "sekret")
    with ReplayServer(api_key="sekret") as srv:
        assert ChatClient(srv.url, "m", api_key_env="YARD_TEST_JUDGE_KEY").chat(MSG).text
        with pytest.raises(ChatError, match="HTTP 401"):
            ChatClient(srv.url, "m", api_key="wrong").chat(MSG)
    assert srv.requests[0]["authorization"] == "Bearer sekret"
    monkeypatch.delenv("YARD_TEST_JUDGE_KEY")
    with pytest.raises(ChatError, match="api_key_env: environment variable YARD_TEST_JUDGE_KEY is not set"):
        ChatClient("http://127.0.0.1:1/v1", "m", api_key_env="YARD_TEST_JUDGE_KEY")


@pytest.mark.parametrize("kwargs, match", [
    ({"base_url": "127.0.0.1:8000"}, "base_url: '127.0.0.1:8000' is not an http"),
    ({"model": ""}, "model: empty model name"),
    ({"max_concurrency": 0}, "max_concurrency must be >= 1"),
])
def test_bad_client_arguments_are_one_line_errors(kwargs, match):
    args = {"base_url": "http://127.0.0.1:1/v1", "model": "m", **kwargs}
    with pytest.raises(ChatError, match=match):
        ChatClient(args.pop("base_url"), args.pop("model"), **args)


def test_bad_messages_are_refused_before_any_request():
    with ReplayServer() as srv:
        with pytest.raises(ChatError, match="messages: expected a non-empty list"):
            ChatClient(srv.url, "m").chat([])
    assert srv.requests == []
