"""A real `ray start --head` on loopback, a job submitted through the Jobs API the way users run
`ray job submit --working-dir . -- yard chat ...`; it must reach SUCCEEDED and its artifacts
must land in the store."""
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


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` in its own process group; killed (group) at the end so the
    session's other Ray instance is untouched."""
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    gcs, dash = free_port(), free_port()
    temp = Path("/tmp") / f"yray{os.getpid()}"  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats"],
        stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    from ray.job_submission import JobSubmissionClient

    client, deadline = None, time.time() + 90
    while time.time() < deadline and client is None:
        try:
            client = JobSubmissionClient(url)
        except Exception:
            assert proc.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(1)
    assert client is not None, "dashboard did not come up"
    yield client
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)


def test_submitted_job_succeeds_and_lands_its_artifacts(ray_head, zoo, tmp_path):
    from ray.job_submission import JobStatus

    from cluster.storage import open_store

    store_dir = tmp_path / "store"
    model = sorted(m for m in zoo.models)[0]
    yard = Path(sys.executable).parent / "yard"
    entrypoint = (
        f"{yard} chat configs/chat.demo.yaml zoo=null registry=[{zoo.registry_path}] "
        f"models=[{model}] storage.uri={store_dir} workers=1 max_new_tokens=24"
    )
    job_id = ray_head.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(REPO), "env_vars": {"YARD_GIT_REV": "test-rev"}},
    )
    deadline = time.time() + 240
    status = None
    while time.time() < deadline:
        status = ray_head.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(2)
    logs = ray_head.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    store = open_store(str(store_dir))
    reply = store.get_json(store.latest("chat", model, prefer=(".json",)).key)
    assert reply["status"] == "ok" and len(reply["reply"]) > 0
    manifest = store.get_json(store.latest("jobs", "chat", prefer=(".json",)).key)
    assert manifest["status"] == "succeeded" and manifest["git_revision"] == "test-rev"
    # the job ran on the submitted cluster, not on a Ray of its own
    assert manifest["ray"]["nodes"] and manifest["ray"]["nodes"][0]["address"] == "127.0.0.1"
    assert "report:" in logs
