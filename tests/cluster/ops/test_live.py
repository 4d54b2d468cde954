"""cluster/ops/live.py: a running job's progress on the console; without a terminal, a plain line per
running (or stalled) task, printed only when something moved."""
import io
import time

from cluster.ops.live import LiveView, enabled, plain_lines
from cluster.ops.progress import ProgressReporter
from cluster.ops.status import collect
from cluster.store.storage_local import LocalStore


def test_plain_progress_lines_show_rate_eta_and_only_news(tmp_path):
    store = LocalStore(str(tmp_path))
    clock = [1000.0]
    rep = ProgressReporter(store, "dna-20261130-000000-abcdef", task="host-0", total=10, stall_after_s=60,
                           min_interval_s=0, console=False, clock=lambda: clock[0])
    rep.phase("generating", item="llama-a")
    for _ in range(4):
        clock[0] += 2.0
        rep.advance()
    (job,) = collect(store, now=clock[0])
    (line,) = plain_lines(job, now=clock[0])
    assert " host-0 RUNNING generating llama-a 4/10 (40.0%) " in line and "ETA" in line

    out = io.StringIO()
    view = LiveView(store, job.job_id, tty=False, stream=out, clock=lambda: clock[0])
    view._tick_plain()
    view._tick_plain()  # nothing moved: nothing printed
    assert out.getvalue().count("host-0") == 1
    rep.finish()
    view._tick_plain()  # nothing running: nothing to print
    assert out.getvalue().count("host-0") == 1


def test_a_stalled_task_is_news_with_its_note(tmp_path):
    store = LocalStore(str(tmp_path))
    clock = [1000.0]
    rep = ProgressReporter(store, "dna-20261130-000000-abcdef", task="host-0", total=10, stall_after_s=60,
                           min_interval_s=0, console=False, clock=lambda: clock[0])
    rep.phase("loading", item="llama-a")
    (job,) = collect(store, now=clock[0] + 500)
    (line,) = plain_lines(job, now=clock[0] + 500)
    assert " host-0 STALLED loading llama-a " in line
    done = ProgressReporter(store, "dna-20261130-000000-abcdef", task="host-1", stall_after_s=60, min_interval_s=0,
                            console=False, clock=lambda: clock[0])
    done.finish()
    (job,) = collect(store, now=clock[0] + 1)
    assert [line.split()[2] for line in plain_lines(job, now=clock[0] + 1)] == ["host-0"]  # finished: not shown


def test_yard_live_0_turns_it_off(tmp_path, monkeypatch):
    monkeypatch.delenv("YARD_LIVE", raising=False)
    assert enabled()
    monkeypatch.setenv("YARD_LIVE", "0")
    assert not enabled()
    with LiveView(LocalStore(str(tmp_path)), "job-1", tty=False, stream=io.StringIO()) as view:
        assert view._thread is None


def test_the_plain_view_prints_from_its_own_thread_and_stops(tmp_path, monkeypatch):
    monkeypatch.delenv("YARD_LIVE", raising=False)
    store = LocalStore(str(tmp_path))
    rep = ProgressReporter(store, "dna-20261130-000000-abcdef", task="host-0", total=4, stall_after_s=60,
                           min_interval_s=0, console=False)
    rep.phase("generating", item="llama-a")
    out = io.StringIO()
    with LiveView(store, "dna-20261130-000000-abcdef", tty=False, plain_interval_s=0.01, stream=out) as view:
        deadline = time.time() + 5
        while "host-0" not in out.getvalue() and time.time() < deadline:
            time.sleep(0.01)
    assert not view._thread.is_alive()
    assert out.getvalue().count("host-0 RUNNING generating llama-a 0/4") == 1  # nothing moved after the first


def test_the_plain_interval_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("YARD_PROGRESS_EVERY_S", "7")
    assert LiveView(LocalStore(str(tmp_path)), "j", tty=False, stream=io.StringIO()).plain_interval_s == 7.0
    assert LiveView(LocalStore(str(tmp_path)), "j", tty=False, stream=io.StringIO(),
                    plain_interval_s=2).plain_interval_s == 2
