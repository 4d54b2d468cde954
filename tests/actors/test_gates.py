"""The playbook's gates a, b and h as pure functions: exact reasons, thresholds from config."""
import pickle

import pytest

from actors.config import GateConfig, WatchdogTier
from actors.gates import GateFailure, Watchdog, check_responses, sanity_gate, validate_responses


def test_sanity_gate_passes_a_real_reply_and_fails_a_short_one():
    sanity_gate("llama-a", "Yes, I can respond to you today.", min_chars=20)
    with pytest.raises(GateFailure) as e:
        sanity_gate("qwen3-b", "  Hi.\n  ", min_chars=20)
    assert e.value.gate == "sanity"
    assert e.value.reason == "model qwen3-b: sanity gate: reply of 3 chars < 20: 'Hi.'"
    with pytest.raises(GateFailure, match=r"^model x: sanity gate: reply of 0 chars < 20: ''$"):
        sanity_gate("x", "", min_chars=20)


def test_sanity_reason_stays_one_line_for_a_messy_reply():
    with pytest.raises(GateFailure) as e:
        sanity_gate("m", "a\nb\n" * 30, min_chars=1000)
    assert "\n" not in e.value.reason and e.value.reason.endswith("...'")


def test_validation_counts_replies_longer_than_min_reply_chars():
    gates = GateConfig()  # > 50 chars valid, >= 90% valid, average > 100
    stats = validate_responses("m", ["x" * 120] * 9 + ["x" * 50], gates)  # 50 is not longer than 50
    assert (stats.n, stats.valid, stats.valid_fraction, stats.avg_chars) == (10, 9, 0.9, 113.0)
    assert stats.ok and stats.reason == ""
    assert check_responses("m", ["  " + "x" * 120 + "  "] * 10, gates).ok  # stripped lengths


def test_validation_fails_with_the_exact_reason():
    gates = GateConfig()
    with pytest.raises(GateFailure) as e:
        check_responses("exaone4-c", ["x" * 200] * 8 + ["", "short"], gates)
    assert e.value.gate == "validation"
    assert e.value.reason == (
        "model exaone4-c: response validation: 8/10 replies (80%) longer than 50 chars < 90%")
    with pytest.raises(GateFailure) as e:
        check_responses("m", ["x" * 100] * 10, gates)  # all valid, but an average of 100 is not over 100
    assert e.value.reason == "model m: response validation: average reply 100.0 chars <= 100"
    both = validate_responses("m", [""] * 4, gates)
    assert not both.ok and both.reason == (
        "model m: response validation: 0/4 replies (0%) longer than 50 chars < 90%; average reply 0.0 chars <= 100")


def test_validation_thresholds_come_from_config():
    loose = GateConfig(min_reply_chars=5, min_valid_fraction=0.5, min_avg_chars=9)
    assert check_responses("m", ["x" * 20, ""], loose).valid_fraction == 0.5
    assert not validate_responses("m", [], loose).ok  # no replies at all is never valid


def test_watchdog_stops_a_slow_model_after_the_first_batch():
    dog = Watchdog("solar", params_b=7.0, gates=GateConfig())
    dog.check(16, 16 * 59.0)  # under the limit: nothing happens
    with pytest.raises(GateFailure) as e:
        dog.check(16, 16 * 95.0)
    assert e.value.gate == "watchdog"
    assert e.value.reason == "model solar: 95.0 s/prompt over the 60 s limit for <=10B models after 16 prompts"
    dog.check(0, 1e9)  # before any prompt finished there is no rate to judge


@pytest.mark.parametrize("params_b, limit, label", [
    (1.28, 60, "<=10B models"), (10, 60, "<=10B models"), (32.8, 120, "<=100B models"), (519, 300, ">100B models"),
])
def test_watchdog_tiers_by_model_size(params_b, limit, label):
    dog = Watchdog("m", params_b, GateConfig())
    assert dog.limit_s == limit
    with pytest.raises(GateFailure, match=f"over the {limit} s limit for {label} after 1 prompts"):
        dog.check(1, limit + 1.0)


def test_watchdog_single_open_tier():
    gates = GateConfig(watchdog=[WatchdogTier(seconds_per_prompt=0.5)])
    with pytest.raises(GateFailure, match=r"^model m: 2.0 s/prompt over the 0.5 s limit for models of any size after 4 prompts$"):
        Watchdog("m", 1000.0, gates).check(4, 8.0)


def test_gate_failure_survives_pickling():  # Ray sends it between processes
    exc = pickle.loads(pickle.dumps(GateFailure("watchdog", "model m: too slow")))
    assert (exc.gate, exc.reason, str(exc)) == ("watchdog", "model m: too slow", "model m: too slow")
