"""cluster/store/storage.py and its two backends. Shared behaviour runs on both LocalStore (tmp_path)
and S3Store (a moto server over real HTTP, see tests/plugins/s3.py)."""
from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from botocore.stub import Stubber
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.store.storage import MARKER, StoreError, new_run_name, open_store
from cluster.store.storage_local import LocalStore
from cluster.store.storage_s3 import MIB, S3Store

# also listed in tests/conftest.py; repeated so this file runs on its own (registering twice is a no-op)
pytest_plugins = ["tests.plugins.s3"]

T0 = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=timezone.utc)


@pytest.fixture(params=["local", "s3"])
def make_store(request, tmp_path):
    """A factory of fresh, empty stores of one backend (hypothesis needs one per example)."""
    if request.param == "local":
        return lambda: LocalStore(tmp_path / secrets.token_hex(4))
    uri, endpoint_url = request.getfixturevalue("s3_uri")
    return lambda: S3Store(f"{uri}/{secrets.token_hex(4)}", endpoint_url=endpoint_url)


@pytest.fixture
def store(make_store):
    return make_store()


@pytest.fixture
def s3_store(s3_uri):
    uri, endpoint_url = s3_uri
    return S3Store(uri, endpoint_url=endpoint_url, multipart_threshold_bytes=5 * MIB)


def add_run(store, when: datetime, files: dict[str, bytes], status: str | None = "ok", model_id="llama-a"):
    """A run named for `when` holding `files`; completed with `status`, or left open if None."""
    run = store.new_run("dna", model_id, name=new_run_name(when))
    for name, data in files.items():
        run.put_bytes(name, data)
    if status is not None:
        run.complete(status=status)
    return run


# --- layout ------------------------------------------------------------------------------------
def test_key_layout(store):
    run = add_run(store, T0, {"responses.json": b"{}", "fingerprint.npy": b"\x93NUMPY"})
    keys = store.list_keys("dna/")
    assert len(keys) == 3
    pattern = re.compile(
        r"^dna/llama-a/20240501-123045-123456[0-9a-f]{6}/"
        r"(responses\.json|fingerprint\.npy|_COMPLETE\.json)$"
    )
    assert all(pattern.match(k) for k in keys), keys
    assert {k.rsplit("/", 1)[1] for k in keys} == {"responses.json", "fingerprint.npy", MARKER}
    marker = store.get_json(run.key(MARKER))
    assert marker["status"] == "ok" and marker["files"] == ["responses.json", "fingerprint.npy"]
    assert store.model_ids("dna") == ["llama-a"]


def test_hf_model_id_becomes_double_dash(store):
    add_run(store, T0, {"responses.json": b"{}"}, model_id="meta-llama/Llama-3.2-1B")
    assert all(k.startswith("dna/meta-llama--Llama-3.2-1B/") for k in store.list_keys("dna/"))
    assert store.model_ids("dna") == ["meta-llama--Llama-3.2-1B"]
    found = store.latest("dna", "meta-llama/Llama-3.2-1B")
    assert found.run.model_id == "meta-llama--Llama-3.2-1B" and found.name == "responses.json"


def test_run_same_second_sorts_by_microseconds(store):
    late = add_run(store, T0.replace(microsecond=900000), {"b.json": b"2"})
    add_run(store, T0.replace(microsecond=1), {"a.json": b"1"})
    assert store.latest("dna", "llama-a").key == late.key("b.json")


# --- latest ------------------------------------------------------------------------------------
def test_run_without_marker_is_invisible(store):
    add_run(store, T0, {"responses.json": b"{}"}, status=None)
    assert store.latest("dna", "llama-a") is None
    assert [r.complete for r in store.runs("dna", "llama-a")] == [False]
    older = add_run(store, T0 - timedelta(days=1), {"responses.json": b"old"})
    assert store.latest("dna", "llama-a").key == older.key("responses.json")


def test_latest_prefers_npy_within_a_run(store):
    run = add_run(store, T0, {"responses.json": b"{}", "fingerprint.npy": b"npy"})
    found = store.latest("dna", "llama-a")
    assert found.key == run.key("fingerprint.npy")
    assert store.get_bytes(found.key) == b"npy"
    assert store.latest("dna", "llama-a", prefer=(".json",)).key == run.key("responses.json")


def test_latest_never_prefers_older_npy_over_newer_json(store):
    add_run(store, T0, {"responses.json": b"{}", "fingerprint.npy": b"npy"})
    newer = add_run(store, T0 + timedelta(seconds=1), {"responses.json": b"{}"})
    assert store.latest("dna", "llama-a").key == newer.key("responses.json")


def test_failed_run_is_skipped_but_kept(store):
    ok = add_run(store, T0, {"responses.json": b"ok"})
    files = {"responses.json": b"half", "fingerprint.npy": b"x"}
    failed = add_run(store, T0 + timedelta(minutes=1), files, status="failed")
    assert store.latest("dna", "llama-a").key == ok.key("responses.json")
    assert {failed.key(f) for f in [*files, MARKER]} <= set(store.list_keys("dna/"))
    assert [(r.name, r.ok) for r in store.runs("dna", "llama-a")] == [(ok.name, True), (failed.name, False)]


def test_complete_run_is_closed(store):
    run = add_run(store, T0, {"responses.json": b"{}"})
    with pytest.raises(StoreError, match="complete"):
        run.put_bytes("more.json", b"{}")
    with pytest.raises(StoreError, match="already complete"):
        run.complete()


# --- files and trees ---------------------------------------------------------------------------
def test_put_dir_uploads_a_tree(store, tmp_path):
    src = tmp_path / "model"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "config.json").write_bytes(b'{"n_layer": 3}')
    (src / "sub" / "weights.bin").write_bytes(os.urandom(3000))
    (src / "sub" / "deeper" / "tok.txt").write_bytes(b"a b c")
    run = store.new_run("lora", "llama-a", name=new_run_name(T0))
    keys = run.put_dir("model", src)
    run.complete()
    rels = ["config.json", "sub/deeper/tok.txt", "sub/weights.bin"]
    assert keys == [run.key(f"model/{r}") for r in rels]
    assert store.list_keys(f"{run.prefix}/model/") == keys
    for rel in rels:
        assert store.get_bytes(run.key(f"model/{rel}")) == (src / rel).read_bytes()
    assert store.get_json(run.key(MARKER))["files"] == [f"model/{r}" for r in rels]


def test_put_file_and_download_roundtrip(store, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(100_000))
    store.put_file("blobs/a/in.bin", src)
    dest = tmp_path / "out" / "nested" / "copy.bin"
    store.download("blobs/a/in.bin", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert store.exists("blobs/a/in.bin") and not store.exists("blobs/a/other.bin")
    assert store.list_keys("blobs/a/i") == ["blobs/a/in.bin"] and store.list_keys("blobs/a/x") == []


def test_download_folder_copies_every_key_under_a_prefix(store, tmp_path):
    run = store.new_run("lora", "llama-a", name=new_run_name(T0))
    run.put_bytes("adapter/config.json", b"{}")
    run.put_bytes("adapter/sub/weights.bin", b"w" * 300)
    run.put_bytes("adapter-notes.txt", b"beside the folder, not in it")
    got = store.download_folder(f"{run.prefix}/adapter/", tmp_path / "adapter")
    assert got == tmp_path / "adapter"
    assert sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file()) == ["config.json", "sub/weights.bin"]
    assert (got / "sub" / "weights.bin").read_bytes() == b"w" * 300
    with pytest.raises(StoreError, match=r"lora/llama-a/.*/nothing: nothing there"):
        store.download_folder(f"{run.prefix}/nothing", tmp_path / "none")


def test_s3_large_file_goes_multipart(s3_store, tmp_path):
    data = os.urandom(12 * MIB)
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(data)
    small.write_bytes(data[: MIB])
    s3_store.put_file("blobs/big.bin", big)
    s3_store.put_file("blobs/small.bin", small)
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key=f"{s3_store.prefix}/blobs/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB parts
    assert head["ContentLength"] == len(data)
    small_head = s3_store.client.head_object(Bucket=s3_store.bucket, Key=f"{s3_store.prefix}/blobs/small.bin")
    assert "-" not in small_head["ETag"]  # one PUT
    assert s3_store.get_bytes("blobs/big.bin") == data
    s3_store.download("blobs/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


def test_s3_list_keys_paginates(s3_store):
    s3_store.list_page_size = 2  # S3's pages hold 1000 keys: three pages of two here, over HTTP all the same
    keys = [f"many/k{i:04d}" for i in range(5)]
    for key in keys:
        s3_store.put_bytes(key, b"")
    assert s3_store.list_keys("many/") == keys


# --- state area --------------------------------------------------------------------------------
def test_state_area(store):
    store.put_state("jobs/j1.json", {"status": "running", "done": 3})
    store.put_state("jobs/j1.json", {"status": "done", "done": 10})  # overwritten in place
    store.put_state("jobs/j2.json", {"status": "queued"})
    store.put_state("heartbeat/w1.json", {"at": 1})
    add_run(store, T0, {"responses.json": b"{}"})
    assert store.get_state("jobs/j1.json") == {"status": "done", "done": 10}
    assert store.list_state() == ["heartbeat/w1.json", "jobs/j1.json", "jobs/j2.json"]
    assert store.list_state("jobs/") == ["jobs/j1.json", "jobs/j2.json"]
    store.delete_state("jobs/j1.json")
    store.delete_state("jobs/never-written.json")  # a no-op, as on S3
    assert store.list_state("jobs/") == ["jobs/j2.json"]
    with pytest.raises(StoreError, match="jobs/j1.json"):
        store.get_state("jobs/j1.json")
    artifact = store.latest("dna", "llama-a").key
    store.delete_state(artifact)  # names a state record, never the artifact
    assert store.exists(artifact)


# --- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model_id", ["", "../etc", "a b", "/abs", "a/../../b", "-lead"])
def test_bad_model_id(store, model_id):
    with pytest.raises(StoreError, match="model id"):
        store.new_run("dna", model_id)


@pytest.mark.parametrize("kind", ["", "..", "a/b", "_state", "dna kind"])
def test_bad_kind(store, kind):
    with pytest.raises(StoreError, match="artifact kind"):
        store.new_run(kind, "llama-a")
    with pytest.raises(StoreError, match="artifact kind"):
        store.latest(kind, "llama-a")


@pytest.mark.parametrize("filename", [MARKER, "/abs.json", "../up.json", "a//b.json", "./x.json", ".tmp-x", ""])
def test_bad_artifact_file_name(store, filename):
    run = store.new_run("dna", "llama-a")
    with pytest.raises(StoreError, match="bad artifact file name"):
        run.put_bytes(filename, b"x")


def test_bad_run_name(store):
    with pytest.raises(StoreError, match="run name"):
        store.new_run("dna", "llama-a", name="my-run")


@pytest.mark.parametrize("key", ["../outside", "/etc/passwd", "a/../../b", "a//b", "a\\b", ""])
def test_keys_cannot_escape_the_root(store, key):
    for call in (lambda: store.put_bytes(key, b"x"), lambda: store.get_bytes(key), lambda: store.exists(key)):
        with pytest.raises(StoreError, match="bad storage key"):
            call()
    with pytest.raises(StoreError, match="bad storage key prefix"):
        store.list_keys(key or "//")


def test_missing_key_names_the_key(store, tmp_path):
    with pytest.raises(StoreError, match="no such artifact: dna/llama-a/nothing.json"):
        store.get_bytes("dna/llama-a/nothing.json")
    with pytest.raises(StoreError, match="no such artifact: dna/x"):
        store.download("dna/x", tmp_path / "out" / "x")


def test_open_store(tmp_path, s3_uri):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    uri, endpoint_url = s3_uri
    s3 = open_store(uri, endpoint_url=endpoint_url)
    assert isinstance(s3, S3Store) and s3.uri == uri
    for bad in ("gs://x", "http://host/x"):
        with pytest.raises(StoreError, match="only s3:// or a local path"):
            open_store(bad)


def test_s3_endpoint_from_env(s3_uri, monkeypatch):
    uri, endpoint_url = s3_uri
    monkeypatch.setenv("YARD_S3_ENDPOINT_URL", endpoint_url)
    store = S3Store(uri)
    store.put_bytes("x.txt", b"hello")
    assert S3Store(uri, endpoint_url=endpoint_url).get_bytes("x.txt") == b"hello"


def test_s3_missing_bucket_is_one_line(s3_server, tmp_path):
    store = S3Store("s3://yard-no-such-bucket/prefix", endpoint_url=s3_server)
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    calls = [
        lambda: store.put_bytes("a.json", b"{}"),
        lambda: store.put_file("a.json", src),
        lambda: store.get_bytes("a.json"),
        lambda: store.download("a.json", tmp_path / "out.bin"),
        lambda: store.list_keys(""),
        lambda: store.latest("dna", "llama-a"),
    ]
    for call in calls:
        with pytest.raises(StoreError) as err:
            call()
        assert str(err.value) == "s3://yard-no-such-bucket/prefix: bucket does not exist"


def test_s3_unreachable_endpoint(s3_server):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3Store("s3://bkt/p", endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(StoreError, match=rf"^s3://bkt/p: cannot reach http://127.0.0.1:{port} to read a.json: ") as err:
        store.get_bytes("a.json")
    assert "\n" not in str(err.value)


def test_s3_access_denied(s3_uri):
    # moto does not enforce permissions; a stubbed reply checks how a 403 is phrased
    uri, endpoint_url = s3_uri
    store = S3Store(uri, endpoint_url=endpoint_url)
    with Stubber(store.client) as stub:
        stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(StoreError, match=r"access denied to read dna/a.json \(AccessDenied"):
            store.get_bytes("dna/a.json")


# --- property: latest wins over randomized append histories ------------------------------------
FILES = ("responses.json", "scores.json", "fingerprint.npy", "layers/emb.npy", "notes.txt")
PREFER = (".npy", ".json")


@dataclass(frozen=True)
class PlannedRun:
    files: tuple[str, ...]
    outcome: str  # ok | failed | incomplete

    @property
    def steps(self) -> int:  # start, each file, then complete unless left incomplete
        return 1 + len(self.files) + (self.outcome != "incomplete")


@dataclass
class History:
    """What was applied so far: a writer per started run (start order) and the files it got."""

    writers: list = field(default_factory=list)
    put: list[list[str]] = field(default_factory=list)

    def expected_latest(self, plans: list[PlannedRun]) -> str | None:
        """The model: the newest run (by name) completed ok; in it the first file of the
        earliest preferred extension; None if there is none or it holds no preferred file."""
        done = [i for i, w in enumerate(self.writers) if w.completed and plans[i].outcome == "ok"]
        if not done:
            return None
        newest = max(done, key=lambda i: self.writers[i].name)
        for ext in PREFER:
            match = sorted(f for f in self.put[newest] if f.endswith(ext))
            if match:
                return self.writers[newest].key(match[0])
        return None


plan_lists = st.lists(
    st.builds(
        PlannedRun,
        st.lists(st.sampled_from(FILES), unique=True, max_size=3).map(tuple),
        st.sampled_from(["ok", "failed", "incomplete"]),
    ),
    max_size=5,
)


def test_latest_wins_on_random_histories(make_store, request):
    examples = 12 if request.node.callspec.params["make_store"] == "s3" else 150  # s3: the same logic over HTTP

    @settings(max_examples=examples, deadline=None)
    @given(plans=plan_lists, gaps_us=st.lists(st.integers(1, 5 * 10**6), min_size=5, max_size=5), data=st.data())
    def check(plans, gaps_us, data):
        store = make_store()
        history = History()
        steps_done = [0] * len(plans)
        when = T0
        while any(steps_done[i] < plan.steps for i, plan in enumerate(plans)):
            # interleave: a step of any started run with steps left, or start the next run
            started = len(history.writers)
            ready = [i for i in range(started) if steps_done[i] < plans[i].steps]
            if started < len(plans):
                ready.append(started)
            i = data.draw(st.sampled_from(ready), label="next step of run")
            plan = plans[i]
            if i == started:
                when += timedelta(microseconds=gaps_us[i])  # starts at strictly increasing fake times
                history.writers.append(store.new_run("dna", "org/model", name=new_run_name(when)))
                history.put.append([])
            elif len(history.put[i]) < len(plan.files):
                name = plan.files[len(history.put[i])]
                history.writers[i].put_bytes(name, name.encode())
                history.put[i].append(name)
            else:
                history.writers[i].complete(status=plan.outcome)
                found = store.latest("dna", "org/model", prefer=PREFER)
                assert (found.key if found else None) == history.expected_latest(plans)
            steps_done[i] += 1

        found = store.latest("dna", "org/model", prefer=PREFER)
        assert (found.key if found else None) == history.expected_latest(plans)
        if found:
            assert store.get_bytes(found.key) == found.key[len(found.run.prefix) + 1 :].encode()
        # nothing lost: every file of every run, failed or incomplete, is still listed
        written = {w.key(f) for w, files in zip(history.writers, history.put) for f in files}
        written |= {w.key(MARKER) for w in history.writers if w.completed}
        assert set(store.list_keys("dna/")) == written

    check()
