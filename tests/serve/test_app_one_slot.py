"""The ingress with one request slot (`limits.max_concurrent_requests: 1`): `/v1/yard/probe` calls
the candidates through their deployment handles, never back through the ingress, so it completes
(calling the ingress's own HTTP route from inside a request deadlocked here: the probe waited for
the slot it held). A chat request sent beside it waits its turn and is answered too."""
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
        "limits": {**LIMITS, "max_concurrent_requests": 1},
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
