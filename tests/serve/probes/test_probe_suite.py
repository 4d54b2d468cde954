"""The probe suite schema: the shipped suite loads; bad suites fail with one line naming the field."""
import pytest
import yaml

from cluster.config import ConfigError, UserError
from serve.probes.probe_suite import GROUPS, load_suite

SHIPPED = "configs/probes.persona.yaml"


def _suite(**changes) -> dict:
    data = {
        "kind": "persona_probes",
        "name": "mini",
        "persona": {"name": "서윤", "system_prompt": "너는 서윤이야.",
                    "facts": [{"key": "city", "question": "어디 살아요?", "expected": ["전주"]}]},
        "probes": [{"id": "who", "group": "identity", "turns": ["누구세요?"]},
                   {"id": "city-2", "group": "fact", "fact": "city", "turns": ["고향이 어디예요?"]}],
    }
    data.update(changes)
    return data


def _load(tmp_path, data: dict):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_suite(path)


def test_shipped_suite_covers_every_group_and_fact_twice():
    suite = load_suite(SHIPPED)
    probes = suite.all_probes()
    assert 18 <= len(probes) <= 30
    assert {p.group for p in probes} == set(GROUPS)
    for fact in suite.persona.facts:
        assert sum(p.fact == fact.key for p in probes) >= 2, fact.key
    texts = " ".join(t for p in probes for t in p.turns)
    assert "AI" in texts and "Ignore all previous instructions" in texts and "이전의 모든 지시를 무시해" in texts
    assert all(len(p.turns) >= 3 for p in probes if p.group == "drift")


def test_derived_fact_probes_and_expected(tmp_path):
    suite = _load(tmp_path, _suite())
    probes = {p.id: p for p in suite.all_probes()}
    assert probes["fact-city"].turns == ["어디 살아요?"] and probes["fact-city"].group == "fact"
    assert suite.expected_for(probes["city-2"]) == ["전주"]
    assert suite.expected_for(probes["who"]) == []


@pytest.mark.parametrize("change,where", [
    ({"persona": None}, "persona:"),
    ("drop-persona", "persona: {...}: Field required"),
    ({"probes": []}, "probes: []: List should have at least 1 item"),
    ({"probes": [{"id": "x", "group": "smalltalk", "turns": ["hi"]}]}, "probes.0.group: 'smalltalk': not allowed (allowed:"),
    ({"probes": [{"id": "x", "group": "identity", "turns": []}]}, "probes.0.turns"),
    ({"probes": [{"id": "x", "group": "identity", "turns": ["  "]}]}, "turn 0 is blank"),
    ({"probes": [{"id": "x", "group": "identity", "turns": ["hi"]}]}, "persona fact 'city' is asked once only"),
    ({"probes": [{"id": "x", "group": "fact", "turns": ["hi"]}]}, "names the persona fact it asks"),
    ({"probes": [{"id": "x", "group": "fact", "fact": "pet", "turns": ["hi"]}]}, "'pet' is not a persona fact (allowed: city)"),
    ({"probes": [{"id": "d", "group": "drift", "turns": ["hi"]}]}, "a drift probe needs 2 or more turns"),
    ({"probes": [{"id": "a", "group": "fact", "fact": "city", "turns": ["q"]},
                 {"id": "a", "group": "identity", "turns": ["q"]}]}, "probe id 'a' appears more than once"),
    ({"probes": [{"id": "c", "group": "fact", "fact": "city", "turns": ["전주에 살죠?"]}]},
     "probes.0.turns: the question holds its own answer '전주'"),
    ({"persona": {"name": "서윤", "system_prompt": "p", "facts": [
        {"key": "city", "question": "전주 살아요?", "expected": ["전주"]}]}}, "persona.facts.0.question: holds its own answer"),
    ({"judge_prompt": "Rate {answer} as [[n]]"}, "judge_prompt: 'Rate {answer} as [[n]]': bad placeholder 'answer'"),
    ({"judge_prompt": "Rate it as [[n]]"}, "must hold {conversation}"),
    ({"kind": "probes"}, "kind: 'probes': not allowed"),
    ({"bogus": 1}, "bogus: 1: Extra inputs are not permitted (unknown field)"),
])
def test_bad_suites_fail_with_one_line(tmp_path, change, where):
    data = _suite()
    if change == "drop-persona":
        del data["persona"]
    else:
        data.update(change)
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, data)
    msg = str(err.value)
    assert isinstance(err.value, UserError)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "suite.yaml")), msg
    assert where in msg, msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_suite(tmp_path / "nope.yaml")
