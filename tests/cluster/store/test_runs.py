"""cluster/store/runs.py: a stored run found by what a user types ("NAME", "NAME/RUN", "KIND/NAME/RUN"),
and one-line errors naming what is stored when the reference matches nothing."""
from datetime import datetime, timedelta, timezone

import pytest

from cluster.config import UserError
from cluster.store.runs import RunRefError, find_run, parse_run_ref
from cluster.store.storage import new_run_name
from cluster.store.storage_local import LocalStore

T0 = datetime(2026, 11, 30, 4, 2, 44, tzinfo=timezone.utc)
RUN = "20261130-040244-2676c7"


@pytest.mark.parametrize("ref, expected", [
    ("prune-kd", ("prune-kd", None)),
    (f"prune-kd/{RUN}", ("prune-kd", RUN)),
    (f"sweep/prune-kd/{RUN}", ("prune-kd", RUN)),
    (f"/sweep/prune-kd/{RUN}/ ", ("prune-kd", RUN)),
    ("org/name", ("org/name", None)),  # an HF-style name keeps its slash
    ("prune-kd/not-a-run-name", ("prune-kd/not-a-run-name", None)),
])
def test_parse_run_ref(ref, expected):
    assert parse_run_ref(ref, "sweep") == expected


@pytest.mark.parametrize("ref", ["", "  ", "/", None])
def test_an_empty_ref_says_what_is_expected(ref):
    with pytest.raises(RunRefError, match=r"sweep ref: expected 'NAME', 'NAME/RUN' or 'sweep/NAME/RUN'"):
        parse_run_ref(ref, "sweep")


def add(store, name, minutes, status="ok"):
    run = store.new_run("sweep", name, name=new_run_name(T0 + timedelta(minutes=minutes)))
    run.put_json("rows.json", [])
    if status is not None:
        run.complete(status=status)
    return run


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def test_a_name_finds_its_newest_complete_ok_run(store):
    first = add(store, "demo", 0)
    add(store, "demo", 1, status="failed")
    add(store, "demo", 2, status=None)  # still running
    run = find_run(store, "sweep", "demo")
    assert run.prefix == first.prefix and run.ok


def test_a_named_run_is_used_even_if_failed_but_must_be_complete(store):
    failed = add(store, "demo", 0, status="failed")
    running = add(store, "demo", 1, status=None)
    assert find_run(store, "sweep", failed.prefix).prefix == failed.prefix
    assert find_run(store, "sweep", f"demo/{failed.name}").prefix == failed.prefix
    with pytest.raises(RunRefError, match=rf"sweep run {running.prefix}: not complete"):
        find_run(store, "sweep", running.prefix)


def test_no_ok_run_names_the_newest_to_use_anyway(store):
    add(store, "demo", 0, status="failed")
    newest = add(store, "demo", 1, status="failed")
    with pytest.raises(RunRefError) as e:
        find_run(store, "sweep", "demo")
    assert str(e.value) == (f"sweep 'demo': none of its 2 runs is complete and ok (newest: {newest.prefix}); "
                            "name one as sweep/demo/RUN_NAME to use it anyway")


def test_unknown_names_and_runs_list_what_is_stored(store):
    with pytest.raises(RunRefError, match=r"sweep 'nope': not found in .*store \(no sweeps stored yet\)$"):
        find_run(store, "sweep", "nope")
    add(store, "demo", 0)
    add(store, "other", 0)
    with pytest.raises(RunRefError, match=r"sweep 'nope': not found in .* \(stored sweeps: demo, other\)$"):
        find_run(store, "sweep", "nope")
    with pytest.raises(RunRefError, match=rf"sweep 'demo': no run '{RUN}' in .* \(1 runs, newest: 20261130-"):
        find_run(store, "sweep", f"demo/{RUN}")


def test_an_org_slash_name_is_found_in_its_stored_form(store):
    run = add(store, "org/model", 0)
    assert run.prefix.startswith("sweep/org--model/")
    assert find_run(store, "sweep", "org/model").prefix == run.prefix


def test_ref_errors_are_user_errors():
    assert issubclass(RunRefError, UserError) and issubclass(RunRefError, ValueError)
