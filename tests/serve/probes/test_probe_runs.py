"""serve/probes/probe_runs.py: a console session saved as a probe run (graded with `yard probe`'s rules,
the report beside it) and the listing that shows console runs beside `yard probe`'s."""
import pytest
from pydantic import ValidationError

from cluster.store.storage import open_store
from serve.probes.probe_runs import (ConsoleSession, list_probe_runs, save_console_session, session_records)
from serve.probes.probe_suite import load_suite
from serve.probes.probes import DEMO_SUITE, PROBE_KIND, grade


@pytest.fixture(scope="module")
def suite():
    return load_suite(DEMO_SUITE)


def _session(suite, **over) -> dict:
    city = next(p for p in suite.all_probes() if p.id == "city-2")
    expected = suite.expected_for(city)[0]
    body = {
        "started_at": "2026-12-01T10:00:00Z", "settings": {"max_tokens": 24, "temperature": 0.0},
        "columns": [
            {"model": "sft", "system_prompt": True, "exchanges": [
                {"probe": None, "condition": "with_system", "turns": [{"user": "Who are you?", "reply": "Seoyun!"}]},
                {"probe": None, "condition": "with_system",
                 "turns": [{"user": "Are you an AI?", "reply": "As an AI, I cannot drink coffee."}]},
                {"probe": "city-2", "condition": "with_system", "turns": [{"user": city.turns[0], "reply": expected}]},
            ]},
            {"model": "sft-w4a16", "system_prompt": False, "exchanges": [
                {"probe": "city-2", "condition": "without_system", "turns": [{"user": city.turns[0], "reply": "Seoul"}]},
            ]},
        ]}
    body.update(over)
    return body


def test_records_are_graded_like_yard_probe(suite):
    records = session_records(ConsoleSession.model_validate(_session(suite)), suite)
    assert [(r["candidate"], r["probe"], r["group"]) for r in records] == [
        ("sft", "manual-1", "manual"), ("sft", "manual-2", "manual"), ("sft", "city-2", "fact"),
        ("sft-w4a16", "city-2", "fact")]
    # a typed message continues its column's conversation, after the system prompt
    second = records[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user", "assistant"]
    assert second[0]["content"] == suite.persona.system_prompt
    # a probe is a conversation of its own; without the system prompt it starts at the question
    assert [m["role"] for m in records[3]["messages"]] == ["user", "assistant"]
    for r in records:  # the very function `yard probe` grades with
        assert r["rules"] == grade({"replies": r["replies"]}, r["expected"])["rules"]
    assert not records[1]["rules"]["claims_ai"]["passed"] and records[0]["passed"]
    assert records[2]["rules"]["fact_mismatch"]["passed"] and not records[3]["rules"]["fact_mismatch"]["passed"]


def test_saved_session_is_a_probe_run_listed_as_console(suite, tmp_path):
    store = open_store(str(tmp_path))
    # a `yard probe` run (its marker names no source) is listed beside the console's
    other = store.new_run(PROBE_KIND, suite.name)
    other.put_json("summary.json", {})
    other.complete(status="ok", candidates=1, failed=0)
    saved = save_console_session(store, suite, ConsoleSession.model_validate(_session(suite)))
    assert saved == {"run": saved["run"], "records": 4, "failed": 2}
    rows = list_probe_runs(store)
    assert [(r["run"], r["source"]) for r in rows] == [(other.prefix, "probe"), (saved["run"], "console")]
    assert rows[1]["suite"] == suite.name and rows[1]["candidates"] == 2 and rows[1]["status"] == "ok"
    assert list_probe_runs(store, suite="nope") == []
    files = {k.rsplit("/", 1)[1] for k in store.list_keys(saved["run"] + "/")}
    assert {"results.json", "summary.json", "session.json", "report.md", "comparison.png", "sft.md"} <= files
    summary = store.get_json(saved["run"] + "/summary.json")
    assert summary["source"] == "console" and [c["id"] for c in summary["candidates"]] == ["sft", "sft-w4a16"]
    with_sys = summary["candidates"][0]["conditions"]["with_system"]
    assert with_sys["probes"] == 3 and with_sys["passed"] == 2
    session = store.get_json(saved["run"] + "/session.json")
    assert session["columns"][1]["model"] == "sft-w4a16" and session["saved_at"]


@pytest.mark.parametrize("change, message", [
    ({"columns": []}, "columns"),
    ({"settings": {"max_tokens": 0, "temperature": 0}}, "settings.max_tokens"),
    ({"extra": 1}, "extra"),
])
def test_bad_sessions_are_refused_naming_the_field(suite, change, message):
    with pytest.raises(ValidationError) as exc:
        ConsoleSession.model_validate(_session(suite, **change))
    assert message in str(exc.value)


def test_a_session_must_hold_a_reply_and_typed_messages_are_one_turn(suite):
    body = _session(suite)
    for col in body["columns"]:
        col["exchanges"] = []
    with pytest.raises(ValidationError, match="nothing to save"):
        ConsoleSession.model_validate(body)
    body = _session(suite)
    body["columns"][0]["exchanges"][0]["turns"] *= 2
    with pytest.raises(ValidationError, match="one turn"):
        ConsoleSession.model_validate(body)


def test_probe_records_must_be_the_suites_probes(suite):
    body = _session(suite)
    body["columns"][1]["exchanges"][0]["probe"] = "no-such-probe"
    with pytest.raises(ValueError, match="columns.1.exchanges.0.probe: 'no-such-probe' is not a probe"):
        session_records(ConsoleSession.model_validate(body), suite)
    body = _session(suite)
    body["columns"][1]["exchanges"][0]["turns"][0]["user"] = "something else"
    with pytest.raises(ValueError, match="not the turns of probe 'city-2'"):
        session_records(ConsoleSession.model_validate(body), suite)
