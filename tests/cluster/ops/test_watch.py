"""cluster/ops/watch.py: when a watched task counts as stalled and what a kill leaves in the progress
records. `wait_watched` cancelling a real stalled Ray task: tests/tune/persona/test_job.py."""
import pytest

from cluster.ops.progress import ProgressReporter, read_task
from cluster.ops.watch import TaskStalled, attempt_stall, end_killed
from cluster.store.storage_local import LocalStore

JOB = "dna-20261130-000000-abcdef"


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def reporter(store, now, task="host-0", stall_after_s=60.0):
    clock = [now]
    rep = ProgressReporter(store, JOB, task=task, stall_after_s=stall_after_s, min_interval_s=0, console=False,
                           clock=lambda: clock[0])
    return rep, clock


def test_no_record_is_a_stall_only_after_the_limit(store):
    assert attempt_stall(store, JOB, "host-0", since=1000.0, stall_after_s=30, now=1020.0) == (None, "starting")
    late, phase = attempt_stall(store, JOB, "host-0", since=1000.0, stall_after_s=30, now=1040.0)
    assert late == (40.0, 30.0) and phase == "starting"


def test_a_beating_record_is_not_stalled_and_a_silent_one_is(store):
    rep, _ = reporter(store, 1000.0)
    rep.phase("generating", item="llama-a")
    assert attempt_stall(store, JOB, "host-0", since=1000.0, stall_after_s=30, now=1050.0) == (None, "generating")
    late, phase = attempt_stall(store, JOB, "host-0", since=1000.0, stall_after_s=30, now=1100.0)
    assert phase == "generating" and late[1] == 60.0 and late[0] > 60.0


def test_an_earlier_attempts_record_does_not_count(store):
    rep, _ = reporter(store, 1000.0)
    rep.finish()  # an ended record: an earlier attempt's
    assert attempt_stall(store, JOB, "host-0", since=1000.0, stall_after_s=30, now=1010.0) == (None, "starting")
    reporter(store, 1000.0, task="host-1")  # running, but started long before this attempt
    late, phase = attempt_stall(store, JOB, "host-1", since=2000.0, stall_after_s=30, now=2040.0)
    assert late == (40.0, 30.0) and phase == "starting"


def test_end_killed_keeps_the_killed_attempts_record_beside_the_tasks(store):
    rep, _ = reporter(store, 1000.0)
    rep.phase("loading")
    end_killed(store, JOB, "host-0", "host-0 stalled; killed", attempt=2)
    killed, own = read_task(store, JOB, "host-0.killed2"), read_task(store, JOB, "host-0")
    assert killed["status"] == own["status"] == "failed"
    assert killed["message"] == own["message"] == "host-0 stalled; killed"
    assert killed["task"] == "host-0.killed2" and killed["phase"] == "loading"


def test_incident_is_a_plain_dict():
    exc = TaskStalled("host-0 stalled", "host-0", "generating", 123.456, 60.0)
    assert str(exc) == "host-0 stalled"
    assert exc.incident(retried=True) == {"task": "host-0", "phase": "generating", "heartbeat_age_s": 123.5,
                                          "limit_s": 60.0, "retried": True, "reason": "host-0 stalled"}
