"""Progress records: numbers that make sense, throttling, failure capture, GPU id mapping."""
import logging
import os
import pickle
import re
import socket

import pytest

from cluster.ops.job_record import job_key, start_job
from cluster.ops.progress import ProgressReporter, progress_key
from cluster.store.storage import StoreError, open_store


class FakeClock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def tick(self, seconds: float) -> float:
        self.t += seconds
        return self.t


class CountingStore:
    """Wraps a store and counts progress-record writes."""

    def __init__(self, store):
        self.inner, self.uri, self.progress_writes = store, store.uri, 0

    def put_state(self, key, obj):
        self.progress_writes += key.startswith("progress/")
        self.inner.put_state(key, obj)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "yard"))


@pytest.fixture
def clock():
    return FakeClock()


def test_rate_and_eta_from_a_fake_clock(store, clock):
    job_id = start_job(store, "dna", stall_after_s=120)
    rep = ProgressReporter(store, job_id, total=10, min_interval_s=0, console=False, clock=clock)
    rep.phase("loading", item="llama-a")
    clock.tick(100)  # a long load does not dilute the generation rate
    rep.phase("generating", item="llama-a")
    for _ in range(4):
        clock.tick(2.0)
        rep.advance(item="llama-a")
    rec = store.get_state(progress_key(job_id, "main"))
    assert (rec["done"], rec["total"], rec["phase"], rec["item"]) == (4, 10, "generating", "llama-a")
    assert rec["rate_per_s"] == pytest.approx(0.5)
    assert rec["eta_s"] == pytest.approx(12.0)
    assert rec["heartbeat_at"] == clock.t and rec["stall_after_s"] == 120.0
    assert rec["node"] == socket.gethostname() and rec["pid"] == os.getpid()


def test_rate_follows_the_recent_window(store, clock):
    job_id = start_job(store, "dna")
    # the rate lives in the reporter; a long write interval keeps the test off the disk
    rep = ProgressReporter(store, job_id, total=1000, min_interval_s=1e9, console=False, clock=clock)
    for _ in range(10):  # slow start: 1 item / 10 s
        clock.tick(10)
        rep.advance()
    for _ in range(400):  # then 4 items/s for 100 s, longer than the 60 s window
        clock.tick(0.25)
        rep.advance()
    assert rep.rate_per_s == pytest.approx(4.0)
    assert rep.eta_s() == pytest.approx((1000 - 410) / 4.0)


def test_advance_is_throttled_but_the_last_item_is_written(store, clock):
    counting = CountingStore(store)
    job_id = start_job(store, "dna")
    rep = ProgressReporter(counting, job_id, total=30, min_interval_s=1.0, console=False, clock=clock)
    assert counting.progress_writes == 1  # the initial record
    for _ in range(29):
        clock.tick(0.1)
        rep.advance()
    # 2.9 s of advances at most once a second
    assert counting.progress_writes == 1 + 2
    assert store.get_state(progress_key(job_id, "main"))["done"] < 29
    clock.tick(0.1)
    rep.advance()
    assert counting.progress_writes == 4
    rec = store.get_state(progress_key(job_id, "main"))
    assert rec["done"] == 30 and rec["eta_s"] == 0.0


def test_heartbeat_stores_extra_keys_throttled(store, clock):
    counting = CountingStore(store)
    job_id = start_job(store, "finetune")
    rep = ProgressReporter(counting, job_id, task="trainer", console=False, clock=clock)
    clock.tick(5)
    rep.heartbeat(step=10, loss=2.5)
    rep.heartbeat(step=11, loss=2.4)  # same instant: not written
    rec = store.get_state(progress_key(job_id, "trainer"))
    assert (rec["step"], rec["loss"]) == (10, 2.5) and counting.progress_writes == 2
    with pytest.raises(ValueError, match="done"):
        rep.heartbeat(done=3)


def test_task_heartbeats_refresh_the_job_record(store, clock):
    job_id = start_job(store, "dna", now=clock.t)
    rep = ProgressReporter(store, job_id, min_interval_s=1.0, console=False, clock=clock)
    clock.tick(30)
    rep.heartbeat()
    assert store.get_state(job_key(job_id))["heartbeat_at"] == clock.t
    clock.tick(1)  # job beats are throttled harder (every >= 5 s)
    rep.heartbeat()
    assert store.get_state(job_key(job_id))["heartbeat_at"] == clock.t - 1


def test_phase_stall_limit_applies_to_that_phase_only(store, clock):
    job_id = start_job(store, "dna", stall_after_s=60)
    rep = ProgressReporter(store, job_id, console=False, clock=clock)
    assert rep.stall_after_s == 60.0  # the job's limit by default
    rep.phase("loading", item="llama-70b", stall_after_s=1800)
    assert store.get_state(progress_key(job_id, "main"))["stall_after_s"] == 1800
    rep.phase("generating", item="llama-70b")
    assert store.get_state(progress_key(job_id, "main"))["stall_after_s"] == 60.0


def test_exception_in_context_marks_the_task_failed(store, clock):
    job_id = start_job(store, "dna")
    with pytest.raises(RuntimeError):
        with ProgressReporter(store, job_id, total=3, console=False, clock=clock) as rep:
            rep.phase("generating", item="gemma")
            raise RuntimeError("CUDA out of memory\nTried to allocate 2.00 GiB")
    rec = store.get_state(progress_key(job_id, "main"))
    assert rec["status"] == "failed"
    assert rec["message"] == "RuntimeError: CUDA out of memory"
    assert rec["phase"] == "generating"  # where it failed


def test_success_ends_in_phase_done(store, clock):
    job_id = start_job(store, "dna")
    with ProgressReporter(store, job_id, total=1, console=False, clock=clock) as rep:
        rep.phase("generating", item="llama-a")
        rep.advance(item="llama-a")
    rec = store.get_state(progress_key(job_id, "main"))
    assert (rec["status"], rec["phase"], rec["item"]) == ("succeeded", "done", None)


def test_context_success_and_explicit_finish_wins(store, clock):
    job_id = start_job(store, "dna")
    with ProgressReporter(store, job_id, task="a", total=1, console=False, clock=clock) as rep:
        rep.advance()
    assert store.get_state(progress_key(job_id, "a"))["status"] == "succeeded"
    with ProgressReporter(store, job_id, task="b", console=False, clock=clock) as rep:
        rep.finish("stopped", "user asked")
    rec = store.get_state(progress_key(job_id, "b"))
    assert (rec["status"], rec["message"]) == ("stopped", "user asked")
    with pytest.raises(ValueError):
        rep.finish("ok")


def test_reporter_pickles_without_its_store(store, clock):
    job_id = start_job(store, "dna")
    rep = ProgressReporter(store, job_id, task="worker-0", total=5, min_interval_s=0, console=False, clock=clock)
    clone = pickle.loads(pickle.dumps(rep))  # as Ray ships it to an actor
    assert clone._store is None
    clone.advance(2, item="llama-a")
    assert clone.store.uri == store.uri
    assert store.get_state(progress_key(job_id, "worker-0"))["done"] == 2


def test_a_failing_store_never_breaks_the_work(store, clock, caplog):
    job_id = start_job(store, "dna")
    rep = ProgressReporter(store, job_id, min_interval_s=0, console=False, clock=clock)

    def broken(key, obj):
        raise StoreError("bucket unreachable")

    rep._store = type("Broken", (), {"put_state": staticmethod(broken), "get_state": store.get_state, "uri": store.uri})()
    with caplog.at_level(logging.WARNING, logger="cluster.ops.progress"):
        rep.advance()
    assert "bucket unreachable" in caplog.text


def test_console_lines_on_phase_and_every_ten_seconds(store, clock, caplog):
    job_id = start_job(store, "dna")
    rep = ProgressReporter(store, job_id, total=50, min_interval_s=0, clock=clock)
    with caplog.at_level(logging.INFO, logger="cluster.ops.progress"):
        rep.phase("generating", item="llama-a")
        for _ in range(12):
            clock.tick(1.0)
            rep.advance(item="llama-a")
    host = socket.gethostname()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == f"{host} generating llama-a"
    assert len(lines) == 2  # 12 s of progress: one progress line
    assert re.fullmatch(rf"{re.escape(host)} generating llama-a 10/50 \(1\.0 items/s, ETA 40s\)", lines[1])


def test_refresh_updates_gpu_memory_but_not_the_heartbeat_and_update_sets_absolute_progress(store, clock):
    """A script loading in silence: its watcher refreshes what it holds on the GPU, and the record
    still shows its last heartbeat (a hang stays visible). A script's `N/M` lines set progress."""
    job_id = start_job(store, "exp", stall_after_s=60)
    rep = ProgressReporter(store, job_id, task="c1", min_interval_s=0, console=False, clock=clock)
    rep.gpu_probe = lambda: ([0], [3.9])
    rep.update(6, 128)
    beat = clock.t
    clock.tick(30)
    rep.refresh()
    rec = store.get_state(progress_key(job_id, "c1"))
    assert rec["heartbeat_at"] == beat and rec["updated_at"] == clock.t and rec["gpu_mem_gib"] == [3.9]
    assert (rec["done"], rec["total"]) == (6, 128)
    rep.update(2, 128)  # the script's next loop: progress starts over
    assert store.get_state(progress_key(job_id, "c1"))["done"] == 2
