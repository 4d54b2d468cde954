"""The playbook's retry rules (cluster/ops/attempts.py), shared by the jobs that retry work."""
import pytest

from cluster.ops.attempts import Attempt, RetryPolicy, error_signature


def test_the_same_error_twice_is_skipped_at_the_second_attempt():
    policy = RetryPolicy(retries=3)
    first = [Attempt("error", "ValueError: bad shard 3")]
    assert policy.decide(first).action == "retry"
    decision = policy.decide(first + [Attempt("error", "ValueError: bad shard 3")])
    assert decision.action == "skipped" and "ValueError: bad shard 3" in decision.reason


def test_different_errors_are_retried_up_to_the_limit_then_failed():
    policy = RetryPolicy(retries=2)
    tries = [Attempt("error", "OSError: a"), Attempt("infra", "worker died"), Attempt("error", "OSError: b")]
    assert [policy.decide(tries[:n]).action for n in (1, 2, 3)] == ["retry", "retry", "failed"]


def test_a_stall_is_rerun_then_failed_and_a_timeout_is_failed_at_once():
    policy = RetryPolicy(retries=5, stall_retries=1)
    assert policy.decide([Attempt("stalled")]).action == "retry"
    decision = policy.decide([Attempt("stalled"), Attempt("stalled")])
    assert decision.action == "failed" and "stalled 2 times" in decision.reason
    assert policy.decide([Attempt("timeout")]).action == "failed"
    assert RetryPolicy(retries=0).decide([Attempt("error", "x")]).action == "failed"
    assert policy.decide([Attempt("error", "x"), Attempt("ok")]).action == "ok"
    with pytest.raises(ValueError, match="allowed"):
        Attempt("crashed")


def test_error_signature_keeps_the_exception_line_and_masks_what_changes_between_attempts():
    a = "Traceback (most recent call last):\n  File \"x.py\"\nRuntimeError: tensor at 0x7f3a2b in /tmp/tmpab12/x took 3.2 s\n"
    b = "Traceback (most recent call last):\n  File \"x.py\"\nRuntimeError: tensor at 0x55aa10 in /tmp/tmpzz99/x took 4.9 s\n"
    assert error_signature(a) == error_signature(b) and error_signature(a).startswith("RuntimeError: tensor at")
    assert error_signature("loading\nstill loading\n") == "still loading"  # no exception line: the last line
    assert error_signature("ValueError: bad model a") != error_signature("ValueError: bad model b")
