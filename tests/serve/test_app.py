"""serve/app.py and serve/console.py on one real Serve app on local Ray hosting zoo models (one app
for both: each start pays Serve's controller and proxy and a replica per model). The API is called
over real HTTP with the `openai` client (and httpx for the malformed requests no client would send);
the probe console's routes over real HTTP (key, bad requests), then its page in headless chromium
driven by selenium: wrong key, the right key, a typed message and a fact probe to two columns (one
with the system prompt), replies and rule marks in both, save, the run found in the store's probe
runs.

The browser is Debian's `chromium` + `chromium-driver` (`make test` installs them as root); the
browser test skips, saying so, only where neither is on PATH. The page's screenshot is kept in
the test's tmp dir, and copied to $YARD_TEST_ARTIFACTS when that is set (`make docs-img`)."""
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from cluster.config import ConfigError, load_config
from cluster.runtime import free_port
from cluster.store.storage import open_store
from serve.config import ServeConfig
from serve.probes.probe_runs import list_probe_runs
from serve.probes.probe_suite import load_suite
from serve.probes.probes import DEMO_SUITE, grade

KEY = "test-key"
# prompt limit: the probe suite's longest conversation fits (the toy models have 512 positions)
LIMITS = {"max_prompt_tokens": 448, "max_tokens": 24, "max_body_bytes": 16384, "max_concurrent_requests": 32}
HI = [{"role": "user", "content": "what is the weather like?"}]




def _make_adapter(base_dir, out_dir) -> str:
    """A tiny random LoRA adapter of llama-a (non-zero B, so it changes the output)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="module")
def served(ray_local, zoo, tmp_path_factory):
    """The module's app: (url, its store)."""
    import torch

    from serve.deploy import shutdown, start_app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    adapter = _make_adapter(zoo.zoo_dir / "llama-a", tmp_path_factory.mktemp("adapter") / "persona")
    store_dir = tmp_path_factory.mktemp("store")
    cfg = ServeConfig.model_validate({
        "kind": "serve", "registry": [str(zoo.registry_path)], "port": free_port(), "api_key": KEY,
        "storage": {"uri": str(store_dir)},
        "limits": LIMITS,
        "candidates": [
            # a generous wait so 8 concurrent clients reliably land in one batch on a busy 2-core box
            {"id": "llama-a", "model": "llama-a", "lora_adapters": {"persona": adapter}, "max_batch_size": 8,
             "batch_wait_timeout_s": 0.3},
            {"id": "exaone4-c", "model": "exaone4-c", "max_batch_size": 4},
        ]})
    url = start_app(cfg)
    yield SimpleNamespace(url=url, store=open_store(str(store_dir)))
    shutdown()
    torch.set_num_threads(threads)


@pytest.fixture
def app(served):
    return served.url


@pytest.fixture
def client(app):
    return openai.OpenAI(base_url=app + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _post(app, body, key=KEY, path="/v1/chat/completions", raw=None):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        return httpx.post(app + path, content=raw, headers={**headers, "content-type": "application/json"}, timeout=60)
    return httpx.post(app + path, json=body, headers=headers, timeout=60)


def _error(resp) -> dict:
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_models_lists_candidates_and_adapters(client):
    assert [m.id for m in client.models.list()] == ["llama-a", "llama-a:persona", "exaone4-c"]


def test_chat_non_streaming_counts_tokens(client):
    r = client.chat.completions.create(model="exaone4-c", messages=HI, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == "exaone4-c"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 1 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_equals_non_streaming_when_greedy(client):
    kwargs = dict(model="llama-a", messages=HI, max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert len(chunks) > 3  # it really streamed, token by token


def test_completions_plain_and_streaming(client):
    r = client.completions.create(model="exaone4-c", prompt="The school", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="exaone4-c", prompt="The school", max_tokens=6, temperature=0, stream=True))
    assert streamed == r.choices[0].text


def test_chat_template_kwargs_reach_the_template(client):
    def rendered(**tkw):
        r = client.chat.completions.create(model="llama-a", messages=HI, max_tokens=2,
                                           extra_body={"chat_template_kwargs": tkw, "yard_debug": True})
        return r.model_extra["yard_debug"]["prompt"]

    assert rendered(enable_thinking=True).endswith("<|im_start|>assistant\n<think>\n")
    off = rendered(enable_thinking=False)
    assert "<think>" not in off and off.endswith("<|im_start|>assistant\n")


def test_lora_adapter_is_its_own_model(client):
    kwargs = dict(messages=HI, max_tokens=12, temperature=0)
    base = client.chat.completions.create(model="llama-a", **kwargs)
    tuned = client.chat.completions.create(model="llama-a:persona", **kwargs)
    assert tuned.model == "llama-a:persona"
    assert tuned.choices[0].message.content != base.choices[0].message.content


def test_api_key_required(app, client):
    bad = openai.OpenAI(base_url=app + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    resp = _post(app, {"model": "llama-a", "messages": HI}, key=None)
    assert resp.status_code == 401 and _error(resp)["code"] == "invalid_api_key"


def test_limits_answer_4xx(app, client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="llama-a", messages=HI, max_tokens=LIMITS["max_tokens"] + 1)
    assert exc.value.body["param"] == "max_tokens"
    long = [{"role": "user", "content": "rain " * 600}]  # under the body limit, over the token limit
    resp = _post(app, {"model": "llama-a", "messages": long})
    assert resp.status_code == 400 and _error(resp)["code"] == "context_length_exceeded"
    resp = _post(app, {"model": "llama-a", "messages": [{"role": "user", "content": "x" * 20000}]})
    assert resp.status_code == 413 and _error(resp)["code"] == "request_too_large"


@pytest.mark.parametrize("body, param", [
    ({"model": "llama-a", "messages": HI, "temperature": 5}, "temperature"),
    ({"model": "llama-a", "messages": "hi"}, "messages"),
    ({"model": "llama-a", "messages": HI, "n": 2}, "n"),
    ({"messages": HI}, "model"),
])
def test_bad_fields_name_the_field(app, body, param):
    resp = _post(app, body)
    assert resp.status_code == 400 and _error(resp)["param"] == param


def test_unknown_model_404(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert "llama-a" in str(exc.value)  # the message names what is served


def test_malformed_json_400(app):
    resp = _post(app, None, raw=b'{"model": "llama-a", "messages": [')
    assert resp.status_code == 400 and _error(resp)["code"] == "invalid_json"
    resp = _post(app, None, raw=json.dumps([1, 2]).encode())
    assert resp.status_code == 400


@pytest.mark.parametrize("body, param", [
    # a request must not bring its own Jinja: it would run in the replica, holding the tokenizer
    ({"model": "llama-a", "messages": HI, "chat_template_kwargs": {"chat_template": "{% for i in range(9) %}x"
                                                                                     "{% endfor %}"}},
     "chat_template_kwargs"),
    ({"model": "llama-a", "messages": HI, "chat_template_kwargs": {"enable_thinking": {"nested": 1}}},
     "chat_template_kwargs"),
    ({"model": "llama-a", "messages": HI, "seed": 18446744073709551616}, "seed"),  # 2**64: raised in generate
    ({"model": "llama-a", "messages": HI, "seed": -1}, "seed"),
    ({"model": "llama-a", "messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
])
def test_hostile_fields_are_refused_before_any_work(app, body, param):
    resp = _post(app, body)
    assert resp.status_code == 400 and _error(resp)["param"] == param, resp.text


def test_deep_json_and_wrong_content_type_are_4xx(app):
    deep = b'{"model": "llama-a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    resp = _post(app, None, raw=deep)
    assert resp.status_code == 400 and "nested" in _error(resp)["message"]
    resp = _post(app, None, raw=b'{"model": "llama-a", "x": ' + b"[" * 40 + b"]" * 40 + b"}")
    assert resp.status_code == 400 and "nested" in _error(resp)["message"]
    resp = httpx.post(app + "/v1/chat/completions", content=json.dumps({"model": "llama-a", "messages": HI}),
                      headers={"authorization": f"Bearer {KEY}", "content-type": "text/plain"}, timeout=60)
    assert resp.status_code == 415 and _error(resp)["code"] == "unsupported_media_type"
    ok = _post(app, {"model": "llama-a", "messages": HI, "max_tokens": 2, "seed": 7})
    assert ok.status_code == 200  # and the app answers normally afterwards


def test_without_a_key_other_origins_are_refused():
    # public hosts without a key are refused by start_app: tests/serve/test_deploy.py
    from serve.requests import BadRequest, check_origin

    with pytest.raises(BadRequest) as exc:
        check_origin(None, "https://evil.example")  # a web page in the user's browser, no key set
    assert exc.value.status == 403 and exc.value.code == "forbidden_origin"
    for fine in (None, "http://localhost:3000", "http://127.0.0.1:8000", "http://[::1]:8000"):
        check_origin(None, fine)
    check_origin("a-key", "https://evil.example")  # with a key, the key decides


def test_concurrent_requests_are_batched_and_replica_survives(app, client):
    from serve.deploy import candidate_info

    before = candidate_info("llama-a")

    def ask(i):
        r = client.chat.completions.create(model="llama-a", messages=[{"role": "user", "content": f"day {i}?"}],
                                           max_tokens=8, extra_body={"yard_debug": True})
        return r.model_extra["yard_debug"]["batch_size"]

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(ask, range(8)))
    assert max(sizes) > 1
    after = candidate_info("llama-a")
    assert max(after["batch_sizes"]) > 1
    # all the refused requests of this module left the same replica serving
    assert after["replica_id"] == before["replica_id"]
    assert httpx.get(app + "/health").json() == {"status": "ok"}


def test_config_rejects_duplicate_ids_and_missing_source(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("kind: serve\ncandidates:\n  - {id: a, model: x}\n  - {id: a, model: y}\n")
    with pytest.raises(ConfigError, match="served twice"):
        load_config(path, ServeConfig)
    path.write_text("kind: serve\ncandidates:\n  - {id: a}\n")
    with pytest.raises(ConfigError, match="candidates.0: .*exactly one of model"):
        load_config(path, ServeConfig)


def test_demo_config_is_valid():
    cfg = load_config("configs/serve.demo.yaml", ServeConfig)
    assert cfg.host == "127.0.0.1" and [c.id for c in cfg.candidates] == ["llama-a", "qwen3-b"]


def test_probe_route_runs_the_suite_through_the_app(app):
    """POST /v1/yard/probe: the configured persona suite against one served model, with and without
    the system prompt, through the app's own API (rule checks; the judge rubric is `yard probe`'s)."""
    resp = _post(app, {"model": "exaone4-c", "max_tokens": 16}, path="/v1/yard/probe")
    assert resp.status_code == 200, resp.text
    summary = resp.json()
    (cand,) = summary["candidates"]
    assert cand["error"] is None and set(cand["conditions"]) == {"with_system", "without_system"}
    for cond in cand["conditions"].values():
        assert cond["probes"] > 10 and 0.0 <= cond["pass_rate"] <= 1.0 and "claims_ai" in cond["rules"]
    assert summary["report"] and summary["report"].endswith(".md") and summary["cached"] is False
    # the same call again: answered from the first run, nothing generated or published twice
    again = _post(app, {"model": "exaone4-c", "max_tokens": 16}, path="/v1/yard/probe").json()
    assert again["cached"] is True and again["report"] == summary["report"]
    assert _post(app, {"model": "nope"}, path="/v1/yard/probe").status_code == 404
    assert _post(app, {"model": "exaone4-c"}, key="wrong", path="/v1/yard/probe").status_code == 401


def test_a_chunked_body_is_cut_off_at_the_limit(app):
    """No Content-Length (chunked transfer): the ingress stops reading at the limit and answers 413."""
    def chunks():
        yield b'{"model": "llama-a", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 1024
        yield b'"}]}'

    resp = httpx.post(app + "/v1/chat/completions", content=chunks(), timeout=60,
                      headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert resp.status_code == 413 and _error(resp)["code"] == "request_too_large"


def test_one_failing_request_fails_alone_not_its_batch():
    """The batch fallback on its own (a request that passes validation yet breaks generate cannot be
    made on demand with a real model): the batch fails, each request is retried alone, and only the
    bad one answers 500."""
    from serve.app import isolate_failures

    calls = []

    def run(batch):
        calls.append(len(batch))
        if any(r["bad"] for r in batch):
            raise RuntimeError("overflow in sampling")
        return [{"text": str(r["i"])} for r in batch]

    out = isolate_failures(run, [{"i": i, "bad": i == 2} for i in range(4)], "t")
    assert [o.get("text") for o in out] == ["0", "1", None, "3"]
    assert out[2]["error"][0] == 500 and "overflow in sampling" in out[2]["error"][1]
    assert calls == [4, 1, 1, 1, 1]

# --- the probe console (serve/console.py) on the same app ----------------------------------------

CONSOLE_MODELS = ("llama-a", "exaone4-c")  # the browser test's two columns
WINDOW = (1400, 900)




def _console_post(served, path, body=None, key=KEY, raw=None):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        headers["content-type"] = "application/json"
    return httpx.post(served.url + path, json=body, content=raw, headers=headers, timeout=60)


def _console_reason(resp) -> str:
    message = resp.json()["error"]["message"]
    assert message and "\n" not in message  # one line
    return message


def test_page_loads_without_a_key_and_holds_no_data(served):
    page = httpx.get(served.url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'type="password"' in page.text and KEY not in page.text
    for name, kind in (("console.js", "javascript"), ("console.css", "css")):
        asset = httpx.get(f"{served.url}/console/assets/{name}", timeout=30)
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
    missing = httpx.get(served.url + "/console/assets/app.py", timeout=30)
    assert missing.status_code == 404 and "no such file" in _console_reason(missing)
    assert httpx.get(served.url + "/console/assets/..%2F..%2Fapp.py", timeout=30).status_code == 404


def test_data_routes_need_the_key(served):
    for key in (None, "wrong"):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        assert httpx.get(served.url + "/console/suite", headers=headers, timeout=30).status_code == 401
        assert _console_post(served, "/console/check", {"replies": ["hi"]}, key=key).status_code == 401
        assert _console_post(served, "/console/save", {}, key=key).status_code == 401


def test_suite_route_gives_the_system_prompt_and_probes(served):
    suite = load_suite(DEMO_SUITE)
    got = httpx.get(served.url + "/console/suite", headers={"authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert got["suite"] == suite.name and got["system_prompt"] == suite.persona.system_prompt
    assert [p["id"] for p in got["probes"]] == [p.id for p in suite.all_probes()]
    assert got["conditions"] == ["with_system", "without_system"] and got["max_tokens_limit"] == LIMITS["max_tokens"]


def test_check_route_is_yard_probes_grade(served):
    suite = load_suite(DEMO_SUITE)
    city = next(p for p in suite.all_probes() if p.id == "city-2")
    for replies, probe, expected in ((["As an AI, I can't drink coffee."], None, []),
                                     (["<think>hm</think>Seoul"], "city-2", suite.expected_for(city))):
        resp = _console_post(served, "/console/check", {"replies": replies, "probe": probe})
        assert resp.status_code == 200
        assert resp.json()["rules"] == grade({"replies": replies}, expected)["rules"]
    marks = resp.json()["rules"]
    assert not marks["think_leak"]["passed"] and not marks["fact_mismatch"]["passed"]


@pytest.mark.parametrize("path, body, status, reason", [
    ("/console/check", {}, 400, "replies"),
    ("/console/check", {"replies": "text"}, 400, "replies"),
    ("/console/check", {"replies": ["a"], "probe": "nope"}, 400, "'nope' is not a probe"),
    ("/console/check", {"replies": ["a"], "extra": 1}, 400, "extra: unknown field"),
    ("/console/save", {}, 400, "session: started_at"),
    ("/console/save", {"started_at": "t", "settings": {"max_tokens": 8, "temperature": 0}, "columns": [
        {"model": m, "system_prompt": False} for m in CONSOLE_MODELS]}, 400, "nothing to save"),
    ("/console/save", {"started_at": "t", "settings": {"max_tokens": 8, "temperature": 0}, "columns": [
        {"model": m, "system_prompt": False, "exchanges": [{"probe": None, "condition": "without_system",
                                                            "turns": [{"user": "hi", "reply": "hello"}]}]}
        for m in ("llama-a", "gpt-9")]}, 400, "'gpt-9' is not served"),
    ("/console/save", {"started_at": "t", "settings": {"max_tokens": 8, "temperature": 0}, "columns": [
        {"model": m, "system_prompt": False, "exchanges": [{"probe": "who-ko", "condition": "without_system",
                                                            "turns": [{"user": "not the probe", "reply": "x"}]}]}
        for m in CONSOLE_MODELS]}, 400, "not the turns of probe"),
])
def test_bad_requests_answer_4xx_with_one_line(served, path, body, status, reason):
    resp = _console_post(served, path, body)
    assert resp.status_code == status and reason in _console_reason(resp)


def test_malformed_bodies_do_not_harm_other_requests(served):
    assert _console_post(served, "/console/save", raw=b"{not json").status_code == 400
    assert _console_post(served, "/console/save", raw=b"[1, 2]").status_code == 400
    wrong_type = httpx.post(served.url + "/console/check", content=b"x", timeout=30,
                            headers={"authorization": f"Bearer {KEY}", "content-type": "text/plain"})
    assert wrong_type.status_code == 415
    assert httpx.get(served.url + "/health", timeout=30).json() == {"status": "ok"}
    assert _console_post(served, "/console/check", {"replies": ["hello"]}).json()["passed"] is True


# --- the page in a real browser ---------------------------------------------------------------

def _browser():
    binary = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no chromium and chromedriver on PATH: apt-get install chromium chromium-driver "
                    "(make test installs them when run as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    # the page's own size (--window-size counts the window's frame too)
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False})
    return browser


def test_console_in_a_browser(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = _browser()
    try:
        wait = WebDriverWait(browser, 180)
        browser.get(served.url + "/")
        find = browser.find_element

        find(By.ID, "key").send_keys("wrong")
        find(By.ID, "connect").click()
        wait.until(ready.visibility_of_element_located((By.ID, "error")))
        assert "Wrong API key" in find(By.ID, "error").text and not find(By.ID, "app").is_displayed()
        assert "wrong" not in browser.current_url and KEY not in browser.current_url

        find(By.ID, "key").clear()
        find(By.ID, "key").send_keys(KEY)
        find(By.ID, "connect").click()
        wait.until(ready.visibility_of_element_located((By.ID, "app")))
        assert not find(By.ID, "error").is_displayed() and KEY not in browser.current_url
        columns = browser.find_elements(By.CSS_SELECTOR, ".column")
        assert len(columns) == 2
        for column, model in zip(columns, CONSOLE_MODELS):
            Select(column.find_element(By.CSS_SELECTOR, "select.model")).select_by_value(model)
        columns[0].find_element(By.CSS_SELECTOR, ".system-toggle").click()  # column 1 with the system prompt

        def marked(n):  # every column shows n exchanges with their marks
            return lambda d: all(len(c.find_elements(By.CSS_SELECTOR, ".block .marks")) >= n for c in columns)

        find(By.ID, "message").send_keys("Who are you? Are you an AI?")
        find(By.ID, "send").click()
        wait.until(marked(1))
        Select(find(By.ID, "probe-pick")).select_by_value("city-2")
        find(By.ID, "run-probes").click()
        wait.until(marked(2))
        for column in columns:
            replies = [b.text for b in column.find_elements(By.CSS_SELECTOR, ".bubble.assistant")]
            assert len(replies) == 2 and all(r.strip() for r in replies)
            rules = [m.get_attribute("data-rule") for m in column.find_elements(By.CSS_SELECTOR, ".mark")]
            assert {"empty", "think_leak", "claims_ai", "refusal", "fact_mismatch"} <= set(rules)
            assert not column.find_elements(By.CSS_SELECTOR, ".bubble.failed")

        wait.until(ready.element_to_be_clickable((By.ID, "save")))
        find(By.ID, "save").click()
        wait.until(lambda d: find(By.ID, "saved").get_attribute("data-run"))
        run = find(By.ID, "saved").get_attribute("data-run")
        assert run in find(By.ID, "saved").text

        shot = tmp_path / "probe-console.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("YARD_TEST_ARTIFACTS"):
            out = Path(os.environ["YARD_TEST_ARTIFACTS"])
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, out / shot.name)
    finally:
        browser.quit()

    assert shot.stat().st_size > 10_000
    (row,) = [r for r in list_probe_runs(served.store) if r["run"] == run]
    assert row["source"] == "console" and row["status"] == "ok" and row["candidates"] == 2
    records = served.store.get_json(run + "/results.json")
    assert sorted({r["candidate"] for r in records}) == sorted(CONSOLE_MODELS) and len(records) == 4
    assert all(r["replies"][0].strip() and {"claims_ai", "think_leak", "refusal"} <= set(r["rules"]) for r in records)
    conditions = {(r["candidate"], r["condition"]) for r in records}
    assert conditions == {("llama-a", "with_system"), ("exaone4-c", "without_system")}
    assert {r["probe"] for r in records} == {"manual-1", "city-2"}
