"""A real `ray start --head` on loopback, a job submitted through the Jobs API the way users run
`ray job submit --working-dir . -- yard chat ...`; it must reach SUCCEEDED and its artifacts
must land in the store."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, temp: Path) -> None:
    """Stop the head's process group, then anything still running from its temp dir (a plain
    SIGTERM makes Ray drain for 30 s)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            break
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue
    subprocess.run(["pkill", "-9", "-f", str(temp)], check=False)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` on loopback in its own process group, with Ray 2.60's token
    authentication on (as on a real cluster); yields an authenticated JobSubmissionClient."""
    import secrets

    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    gcs, dash = free_port(), free_port()
    temp = Path("/tmp") / f"yray{os.getpid()}"  # short: Ray's socket paths have a length limit
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats",
         # free ports: the session's in-process Ray already holds the agents' defaults
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
         f"--ray-client-server-port={free_port()}"],
        stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    from ray.job_submission import JobSubmissionClient

    client, deadline, error = None, time.time() + 90, None
    try:
        while time.time() < deadline and client is None:
            try:
                client = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
            except Exception as exc:
                error = exc
                assert proc.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
                time.sleep(1)
        assert client is not None, f"dashboard did not come up: {error}"
        yield client, gcs
    finally:
        stop_group(proc, temp)


def test_submitted_job_succeeds_and_lands_its_artifacts(ray_head, zoo, tmp_path):
    from ray.job_submission import JobStatus

    client, gcs_port = ray_head
    from cluster.store.storage import open_store

    store_dir = tmp_path / "store"
    model = sorted(m for m in zoo.models)[0]
    yard = Path(sys.executable).parent / "yard"
    entrypoint = (
        f"{yard} chat configs/chat.demo.yaml zoo=null registry=[{zoo.registry_path}] "
        f"models=[{model}] storage.uri={store_dir} workers=1 max_new_tokens=24"
    )
    runtime_env = {"working_dir": str(REPO), "env_vars": {"YARD_GIT_REV": "test-rev"}}
    job_id, deadline = None, time.time() + 120
    while job_id is None:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as exc:  # the job agent starts a little after the dashboard
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            time.sleep(2)
    deadline = time.time() + 240
    status = None
    while time.time() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(2)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    store = open_store(str(store_dir))
    reply = store.get_json(store.latest("chat", model, prefer=(".json",)).key)
    assert reply["status"] == "ok" and len(reply["reply"]) > 0
    manifest = store.get_json(store.latest("jobs", "chat", prefer=(".json",)).key)
    assert manifest["status"] == "succeeded" and manifest["git_revision"] == "test-rev"
    # the job joined the cluster it was submitted to (RAY_ADDRESS), not a Ray of its own
    assert manifest["ray"]["gcs_address"].endswith(f":{gcs_port}")
    assert len(manifest["ray"]["nodes"]) == 1 and manifest["ray"]["resources"]["CPU"] == 2.0
    assert "report:" in logs

    # `yard run` (users' own script over a grid) submitted the same way: its conditions run on the
    # cluster's workers and their results land in the durable store
    import yaml

    (tmp_path / "cond.py").write_text("import json, sys\nprint('1/1')\nprint(json.dumps({'v': int(sys.argv[1]) * 2}))\n")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({
        "kind": "experiment", "name": "submitted", "command": ["python", str(tmp_path / "cond.py"), "{v}"],
        "grid": {"v": [1, 2]}, "storage": {"uri": str(store_dir)}}))
    run_id = client.submit_job(entrypoint=f"{yard} run {tmp_path / 'exp.yaml'}", runtime_env=runtime_env)
    deadline = time.time() + 120
    while time.time() < deadline and client.get_job_status(run_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        time.sleep(1)
    assert client.get_job_status(run_id) == JobStatus.SUCCEEDED, client.get_job_logs(run_id)[-3000:]
    results = [k for k in store.list_keys("experiments/submitted/results/") if k.endswith("results.jsonl")]
    rows = [json.loads(line) for line in store.get_bytes(results[0]).decode().splitlines()]
    # the result's "v" meets the axis "v": it is kept as "result.v"
    assert sorted((r["v"], r["status"], r["result.v"]) for r in rows) == [(1, "ok", 2), (2, "ok", 4)]

    # The same job with the laptop default store (.yard, relative): inside Ray's temporary copy of
    # the working dir its artifacts would vanish with the cluster's temp files. Refused, one line.
    job_id = client.submit_job(entrypoint=entrypoint.replace(f" storage.uri={store_dir}", ""), runtime_env=runtime_env)
    deadline = time.time() + 120
    while time.time() < deadline and client.get_job_status(job_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    assert client.get_job_status(job_id) == JobStatus.FAILED, logs[-2000:]
    (line,) = [ln for ln in logs.splitlines() if "storage.uri" in ln]
    assert "'.yard' is relative" in line and "YARD_STORE" in line and "Traceback" not in logs
