"""ReplayServer: a real OpenAI-compatible HTTP server answering from recordings (the stand-in
judge and candidate of the serve tests and of `yard demo`, since a real judge model cannot run
on this machine). The official `openai` client is the reference caller."""
import json

import openai
import pytest

from serve.judge.replay import ReplayError, ReplayServer, default_judgment
from serve.judge.judge_prompts import parse_rating, parse_verdict


def test_openai_client_works_against_it():
    with ReplayServer([{"match": "capital", "content": "Seoul."}], models=["cand-a"]) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="cand-a", messages=[{"role": "user", "content": "capital?"}])
        models = [m.id for m in client.models.list()]
    assert reply.choices[0].message.content == "Seoul." and reply.model == "cand-a"
    assert models == ["cand-a"]


def test_matching_beats_generic_and_generic_entries_cycle():
    recs = [{"match": None, "content": "g1"}, {"match": "special", "content": "s"}, {"match": None, "content": "g2"}]
    with ReplayServer(recs) as srv, openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0) as client:
        def ask(text):
            msgs = [{"role": "user", "content": text}]
            return client.chat.completions.create(model="m", messages=msgs).choices[0].message.content
        got = [ask("a"), ask("a special one"), ask("b"), ask("c")]
    assert got == ["g1", "s", "g2", "g1"]
    assert [r["messages"][0]["content"] for r in srv.chat_requests] == ["a", "a special one", "b", "c"]


def test_default_judgment_is_deterministic_and_parseable():
    msgs = [{"role": "user", "content": "rate this"}]
    assert default_judgment(msgs) == default_judgment(msgs)
    assert 1 <= parse_rating(default_judgment(msgs)) <= 10
    pair = [{"role": "user", "content": 'answer "[[A]]", "[[B]]" or "[[C]]"'}]
    assert parse_verdict(default_judgment(pair)) in ("A", "B", "C")


def test_echo_default_and_strict_mode():
    msgs = [{"role": "user", "content": "what is up"}]
    with ReplayServer(default="echo") as srv, openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0) as c:
        text = c.chat.completions.create(model="m", messages=msgs).choices[0].message.content
    assert "You asked: what is up" in text
    with ReplayServer(default=None) as srv, openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0) as c:
        with pytest.raises(openai.InternalServerError, match="no recording matches"):
            c.chat.completions.create(model="m", messages=msgs)


def test_recordings_load_from_jsonl(tmp_path):
    path = tmp_path / "rec.jsonl"
    path.write_text(json.dumps({"match": "x", "content": "from file"}) + "\n", encoding="utf-8")
    with ReplayServer(path) as srv, openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0) as c:
        text = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert text.choices[0].message.content == "from file"


@pytest.mark.parametrize("recs, match", [
    ([{"match": None, "stauts": 200, "content": "x"}], r"recordings\[0\]\.stauts: unknown field"),
    ([{"status": 700}], r"recordings\[0\]\.status: 700 is not an HTTP status"),
    ([{"status": 200}], r"recordings\[0\]\.content: a 200 recording needs a string content"),
    ([{"status": 429, "times": 0}], r"recordings\[0\]\.times: 0 must be an integer >= 1"),
    (["oops"], r"recordings\[0\]: expected a mapping"),
])
def test_bad_recordings_name_the_entry_and_field(recs, match):
    with pytest.raises(ReplayError, match=match):
        ReplayServer(recs)


def test_malformed_request_body_gets_a_400():
    import httpx

    with ReplayServer() as srv:
        resp = httpx.post(f"{srv.url}/chat/completions", content=b"{not json", timeout=5)
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"
