"""The ingress with one request slot (`limits.max_concurrent_requests: 1`) and its one candidate's
engine in its own replica (`ingress: colocated`): `/v1/yard/probe` calls the candidate directly,
never back through the ingress, so it completes (calling the ingress's own HTTP route from inside
a request deadlocked here: the probe waited for the slot it held). A chat request sent beside it
waits its turn and is answered too. (test_app.py serves its candidates `separate`: a replica each.)"""
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cluster.runtime import free_port
from serve.config import ServeConfig
from tests.serve.test_app import HI, KEY, LIMITS


@pytest.fixture(scope="module")
def app(ray_local, zoo, tmp_path_factory):
    import torch

    from serve.deploy import shutdown, start_app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = ServeConfig.model_validate({
        "kind": "serve", "registry": [str(zoo.registry_path)], "port": free_port(), "api_key": KEY,
        "storage": {"uri": str(tmp_path_factory.mktemp("store"))},
        "limits": {**LIMITS, "max_concurrent_requests": 1}, "ingress": "colocated",
        "candidates": [{"id": "exaone4-c", "model": "exaone4-c", "max_batch_size": 4}]})
    url = start_app(cfg)
    yield url
    shutdown()
    torch.set_num_threads(threads)


def _post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=300)


@pytest.mark.timeout(400)
def test_probe_completes_with_one_slot_and_a_chat_beside_it_waits_its_turn(app):
    with ThreadPoolExecutor(2) as pool:
        probe = pool.submit(_post, app, "/v1/yard/probe", {"model": "exaone4-c", "max_tokens": 8})
        chat = pool.submit(_post, app, "/v1/chat/completions", {"model": "exaone4-c", "messages": HI, "max_tokens": 8})
        probed, chatted = probe.result(timeout=320), chat.result(timeout=320)
    assert probed.status_code == 200, probed.text
    (cand,) = probed.json()["candidates"]
    assert cand["error"] is None and set(cand["conditions"]) == {"with_system", "without_system"}
    assert chatted.status_code == 200, chatted.text
    assert chatted.json()["usage"]["completion_tokens"] > 0


def test_colocated_engine_is_the_ingress_replica_and_streams(app):
    from ray import serve

    from serve.app import APP_NAME
    from serve.deploy import candidate_info, deployment_name

    # one deployment: the ingress, named after the candidate, answers for the engine it holds
    assert list(serve.status().applications[APP_NAME].deployments) == [deployment_name("exaone4-c")]
    body = {"model": "exaone4-c", "messages": HI, "max_tokens": 8, "temperature": 0}
    plain = _post(app, "/v1/chat/completions", body).json()["choices"][0]["message"]["content"]
    info = candidate_info("exaone4-c")
    assert info["model_ids"] == ["exaone4-c"] and info["batch_sizes"]  # generated in the ingress's replica
    with httpx.stream("POST", app + "/v1/chat/completions", json={**body, "stream": True},
                      headers={"authorization": f"Bearer {KEY}"}, timeout=120) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200 and lines[-1] == "data: [DONE]"
    streamed = "".join(json.loads(x[6:])["choices"][0]["delta"].get("content") or "" for x in lines[:-1])
    assert streamed == plain  # greedy: the stream is the same text
    bad = _post(app, "/v1/chat/completions", {**body, "max_tokens": 10_000})
    assert bad.status_code == 400 and "max_tokens" in bad.json()["error"]["message"]
