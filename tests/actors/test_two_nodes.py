"""`yard dna` on a real two-node Ray cluster (issue 12): a head and a second node on this machine,
started with the `ray` CLI; the second node is stopped while one of its hosts is mid-model.

Ray in the pytest process: none. The job runs as a `yard dna` subprocess, the only driver of
the two-node cluster, and this process never calls `ray.init` (the store and /proc are all it
reads). So a session-scoped `ray_local` Ray that this xdist worker may already hold is left as it
was: neither shut down under the tests that share it nor re-initialised with other settings (a
`ray.shutdown()` here would make their next `connect()` start a different local Ray). The test
asserts that `ray.is_initialized()` is the same after it as before.

Which node a host ran on: Ray starts a worker as a child of its node's raylet, and each raylet
is a child of its `ray start --block` process, so a host's pid (in its progress record) leads
through /proc to the `ray start` of its node.

Each node has one CPU, so the fresh host that takes the lost host's model waits on the head until
the head's own host has finished its queue and been retired (the scheduler retires a host whose
queue is done at once, not at the end of the job).
"""
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from actors.dna_job import DEMO_CONFIG
from cluster.ops.jobs import REPO_ROOT
from cluster.runtime import free_port
from cluster.store.storage import open_store

pytestmark = pytest.mark.slow

RAY_CLI = Path(sys.executable).with_name("ray")
# Four models of three families: two per host. 16 probes in batches of 4 keep a model on a host
# for ~5 s on 2 cores: long enough to stop the node mid-model, short enough for the whole run.
MODELS = ["exaone4-c", "llama-a", "llama-a-continued", "qwen3-b"]
JOB_ARGS = ["probes.count=16", "generation.max_new_tokens=60", "generation.batch_size=4", "hosts.max_hosts=2",
            "hosts.cpus_per_host=1"]
# One CPU a node: one host each. Each node reports its own memory (two nodes started seconds apart
# on one machine differ slightly): the planner must still see one kind of 2 nodes, 2 hosts (it once
# made two kinds of one name of them and planned a single host).
NODE_ARGS = ["--num-cpus", "1", "--object-store-memory", str(200 * 2**20), "--disable-usage-stats", "--block"]


def _stat(pid: int) -> tuple[int, int, str, int] | None:
    """(ppid, pgid, state, start time) of a live process, None when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[2]), fields[0], int(fields[19])


def _alive(proc: tuple[int, int]) -> bool:
    """(pid, start time) still running (a zombie counts as gone: nothing reaps here but init)."""
    st = _stat(proc[0])
    return st is not None and st[2] != "Z" and st[3] == proc[1]


def _tree(roots: set[int]) -> set[tuple[int, int]]:
    """Every live process under `roots` or in their process groups, as (pid, start time). Ray's
    workers run in their own process groups: only the parent links find them."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None and st[2] != "Z":
            table[int(entry.name)] = st
    found = {pid for pid, st in table.items() if pid in roots or st[1] in roots}
    while True:
        more = {pid for pid, st in table.items() if st[0] in found} - found
        if not more:
            return {(pid, table[pid][3]) for pid in found}
        found |= more


class TwoNodes:
    """`ray start --head` and `ray start --address`, each `--block` in its own process group."""

    def __init__(self, base: Path):
        self.base, self.port = base, free_port()
        # a token of our own (Ray 2.60 turns token authentication on for a new head)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "PYTHONUNBUFFERED": "1",  # `ray start`'s lines reach its log as it prints them
                    # plain progress lines, as on a console without a terminal
                    "YARD_DASHBOARD": "0", "YARD_PROGRESS_EVERY_S": "2"}
        self.env.pop("YARD_LOG", None)
        self.env.pop("RAY_ADDRESS", None)
        self.procs: dict[str, subprocess.Popen] = {}
        self.seen: set[tuple[int, int]] = set()  # every process of the cluster ever snapshotted

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, name: str, args: list[str], nodes: int, attempts: int = 2) -> None:
        with open(self.base / f"{name}.log", "w") as log:
            self.procs[name] = subprocess.Popen(
                [str(RAY_CLI), "start", *args, "--temp-dir", str(self.base / name),
                 "--dashboard-agent-listen-port", str(free_port()), *NODE_ARGS],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        deadline = time.time() + 120
        # `ray start --block` says so once its node is up; each `ray status` costs a Python start
        while "Ray runtime started" not in (self.base / f"{name}.log").read_text(errors="replace"):
            if self.procs[name].poll() is not None and attempts > 1 and "timed out during startup" in self.log(name):
                # Ray gives a raylet 30 s (fixed) to register with the GCS: on a busy 2-core machine
                # that ran out once (a fresh-clone run). Stopped whole and started again, as an operator would.
                self.stop(name, grace_s=5.0)
                return self.start(name, args, nodes, attempts - 1)
            assert self.procs[name].poll() is None, f"ray start {name} exited: {self.log(name)}"
            assert time.time() < deadline, f"ray start {name}: not up after 120 s: {self.log(name)}"
            time.sleep(0.5)
        while self.alive_nodes() < nodes:
            assert self.procs[name].poll() is None, f"ray start {name} exited: {self.log(name)}"
            assert time.time() < deadline, f"{nodes} nodes not up after 120 s: {self.log(name)}"
            time.sleep(2)

    def alive_nodes(self) -> int:
        out = subprocess.run([str(RAY_CLI), "status", "--address", self.address], check=False, env=self.env,
                             capture_output=True, text=True, timeout=60).stdout
        if "Active:" not in out:
            return 0
        return out.split("Active:", 1)[1].split("Pending:", 1)[0].count("node_")

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text()[-3000:]

    def node_of(self, pid: int) -> str | None:
        """'head' or 'node2': the `ray start` this process descends from (None: gone or neither)."""
        roots = {p.pid: name for name, p in self.procs.items()}
        while pid > 1:
            if pid in roots:
                return roots[pid]
            st = _stat(pid)
            if st is None:
                return None
            pid = st[0]
        return None

    def stop(self, name: str, grace_s: float = 20.0) -> None:
        """What `ray stop` does on one node: SIGTERM to its processes, SIGKILL after `grace_s`."""
        proc = self.procs[name]
        procs = _tree({proc.pid})
        self.seen |= procs
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid, _ in procs:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + grace_s
            while any(_alive(p) for p in procs) and time.time() < deadline:
                time.sleep(0.2)
            if not any(_alive(p) for p in procs):
                break
        proc.wait(timeout=10)

    def ours(self) -> set[tuple[int, int]]:
        """Every running process that carries this cluster's token: all of its processes inherit it."""
        mark, found = f"RAY_AUTH_TOKEN={self.env['RAY_AUTH_TOKEN']}".encode(), set()
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.add((int(entry.name), _stat(int(entry.name))[3]))
            except (OSError, TypeError):
                continue  # gone meanwhile
        return {p for p in found if _alive(p)}

    def close(self) -> list[str]:
        """Stop both nodes; the command lines of any process of the cluster still running then."""
        for name in reversed(list(self.procs)):
            self.stop(name, grace_s=5.0)  # the test is over: SIGKILL sooner
        left = {p for p in self.seen if _alive(p)} | self.ours()
        lines = []
        for pid, _ in left:
            try:
                lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
                os.kill(pid, signal.SIGKILL)
            except (OSError, UnicodeDecodeError):
                pass
        return lines


@pytest.fixture
def two_nodes():
    base = Path(f"/tmp/yd2n-{secrets.token_hex(3)}")  # short: Ray's socket paths live under it
    base.mkdir()
    cluster = TwoNodes(base)
    try:
        cluster.start("head", ["--head", "--port", str(cluster.port), "--include-dashboard=false",
                               "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port())], 1)
        cluster.start("node2", ["--address", cluster.address], 2)
        yield cluster
    finally:
        left = cluster.close()
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"processes of the test cluster still running: {left}"


def _records(store) -> dict[str, dict]:
    out = {}
    for key in store.list_state("progress/"):
        try:
            rec = store.get_state(key)
        except (OSError, ValueError):
            continue  # being written
        out[rec["task"]] = rec
    return out


def _check_the_console_holds_tables_and_paths_not_workers(console: str, store_dir: Path) -> None:
    """`yard dna` as a user runs it, without a terminal (cluster/joblog.py): the workers' output
    (progress log lines, model loading, Ray's pid-prefixed lines) is in the job's log file, not on
    the console, which holds the job's own lines, tables and paths: the log's path printed once, and
    plain progress lines every 2 s (YARD_PROGRESS_EVERY_S) that keep the console short."""
    logs = list((store_dir / "logs").glob("dna-*.log"))
    assert len(logs) == 1 and console.count(str(logs[0])) == 1  # the path, printed once
    text = logs[0].read_text()
    assert "pid=" in text  # the hosts' own lines, prefixed as Ray prefixes them
    assert "pid=" not in console and "Loading weights" not in console
    assert "report:" in console
    assert len(console.splitlines()) < 80, console


def _completed_at(run) -> float:
    return datetime.fromisoformat(run.marker["completed_at"]).timestamp()


@pytest.mark.timeout(600)
def test_stopping_a_node_mid_run_keeps_finished_models_and_finishes_the_rest_on_the_head(two_nodes, zoo, tmp_path):
    import ray

    ray_before = ray.is_initialized()
    assert set(MODELS) <= set(zoo.models)
    store_dir = tmp_path / "store"
    log_path = tmp_path / "dna.log"
    cmd = [sys.executable, "-m", "cluster", "dna", str(DEMO_CONFIG), "zoo=null", f"registry=[{zoo.registry_path}]",
           f"storage.uri={store_dir}", f"models=[{','.join(MODELS)}]", *JOB_ARGS, f"ray.address={two_nodes.address}",
           "--accept-suspicious"]
    started = time.time()
    with open(log_path, "w") as log:
        job = subprocess.Popen(cmd, cwd=REPO_ROOT, env=two_nodes.env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    node_of: dict[str, str] = {}  # host (task) -> node, read while its process runs
    stopped_at = stopped_while = None
    try:
        while job.poll() is None:
            assert time.time() - started < 400, "yard dna still running after 400 s"
            time.sleep(0.2)
            store = open_store(str(store_dir))
            for task, rec in _records(store).items():
                if task not in node_of and rec.get("pid") and (node := two_nodes.node_of(rec["pid"])):
                    node_of[task] = node
                last = rec.get("last_model") or {}
                if (stopped_at is None and node_of.get(task) == "node2" and last.get("status") == "ok"
                        and rec.get("phase") in ("loading", "gate", "generating") and rec.get("item") != last["model_id"]):
                    # one model of this host finished, the next one is under way: stop its node
                    stopped_at, stopped_while = time.time(), (task, rec["item"], last["model_id"])
                    two_nodes.stop("node2")
        code = job.wait()
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    seconds = time.time() - started
    out = log_path.read_text()
    assert code == 0, out[-5000:]
    _check_the_console_holds_tables_and_paths_not_workers(out, store_dir)
    assert stopped_at is not None, f"node2's host never started a second model: {node_of}\n{out[-3000:]}"
    lost_host, interrupted, kept = stopped_while

    # the two planned hosts ran one on each node
    assert {node_of.get("host-0"), node_of.get("host-1")} == {"head", "node2"}, node_of

    store = open_store(str(store_dir))
    summary = json.loads(store.get_bytes(store.latest("reports", "dna", prefer=("summary.json",)).key))
    outcomes = {o["model_id"]: o for o in summary["outcomes"]}
    assert summary["published"] and {m: o["status"] for m, o in outcomes.items()} == dict.fromkeys(MODELS, "ok")

    # finished before the stop: kept, never computed again
    host_of = {}
    for mid in MODELS:
        run = summary["runs"][mid]
        host_of[mid] = store.get_json(f"dna/{mid}/{run}/outcome.json")["host_id"]
    on_node2 = [m for m in MODELS if host_of[m] == lost_host]
    assert kept in on_node2
    for mid in on_node2:
        (run,) = store.runs("dna", mid)
        assert run.ok and run.name == summary["runs"][mid] and _completed_at(run) < stopped_at
        assert outcomes[mid]["attempts"] == 1

    # the lost host is an infrastructure failure: its model retried on a fresh host
    records = _records(store)
    dead = records[lost_host]
    assert dead["status"] == "failed" and dead["message"].startswith(f"host died while on {interrupted}: "), dead
    assert f"{interrupted}: host failed (" in out and "retrying on a fresh host" in out
    assert outcomes[interrupted]["attempts"] == 2
    assert host_of[interrupted].startswith(f"{lost_host}.")  # a fresh host of the same slot

    # the rest finished on the head; no host of the job is left running
    for mid in set(MODELS) - set(on_node2):
        assert node_of[host_of[mid]] == "head", (mid, host_of[mid], node_of)
    hosts = set(records) - {lost_host}
    assert all(node_of[t] == "head" for t in hosts), node_of
    assert {t: records[t]["status"] for t in hosts} == dict.fromkeys(hosts, "succeeded")
    job_id = dead["job_id"]
    assert store.get_state(f"ended/{job_id}.json")["status"] == "succeeded"
    assert ray.is_initialized() == ray_before  # the pytest process never joined the test cluster
    print(f"two nodes: stopped node2 at {stopped_at - started:.0f} s while {lost_host} ran {interrupted}; "
          f"job done in {seconds:.0f} s")
