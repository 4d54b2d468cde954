"""serve/console.py: the probe console on a real Serve app hosting two zoo models. Its routes over
real HTTP (key, bad requests), then the page itself in headless chromium driven by selenium:
wrong key, the right key, a typed message and a fact probe to two columns (one with the system
prompt), replies and rule marks in both, save, the run found in the store's probe runs.

The browser is Debian's `chromium` + `chromium-driver` (`make test` installs them as root); the
browser test skips, saying so, only where neither is on PATH. The page's screenshot is kept in
the test's tmp dir, and copied to $YARD_TEST_ARTIFACTS when that is set."""
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from cluster.runtime import free_port
from cluster.store.storage import open_store
from serve.config import ServeConfig
from serve.probes.probe_runs import list_probe_runs
from serve.probes.probe_suite import load_suite
from serve.probes.probes import DEMO_SUITE, grade

pytestmark = pytest.mark.slow

KEY = "console-key"
MODELS = ("llama-a", "qwen3-b")
LIMITS = {"max_prompt_tokens": 448, "max_tokens": 16, "max_body_bytes": 16384, "max_concurrent_requests": 32}
WINDOW = (1400, 900)


@pytest.fixture(scope="module")
def app(ray_local, zoo, tmp_path_factory):
    from serve.deploy import shutdown, start_app

    store_dir = tmp_path_factory.mktemp("store")
    cfg = ServeConfig.model_validate({
        "kind": "serve", "registry": [str(zoo.registry_path)], "port": free_port(), "api_key": KEY,
        "storage": {"uri": str(store_dir)}, "limits": LIMITS,
        "candidates": [{"id": m, "model": m, "chat_template_kwargs": {"enable_thinking": False}} for m in MODELS]})
    url = start_app(cfg)
    yield SimpleNamespace(url=url, store=open_store(str(store_dir)))
    shutdown()


def _post(app, path, body=None, key=KEY, raw=None):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        headers["content-type"] = "application/json"
    return httpx.post(app.url + path, json=body, content=raw, headers=headers, timeout=60)


def _reason(resp) -> str:
    message = resp.json()["error"]["message"]
    assert message and "\n" not in message  # one line
    return message


def test_page_loads_without_a_key_and_holds_no_data(app):
    page = httpx.get(app.url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'type="password"' in page.text and KEY not in page.text
    for name, kind in (("console.js", "javascript"), ("console.css", "css")):
        asset = httpx.get(f"{app.url}/console/assets/{name}", timeout=30)
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
    missing = httpx.get(app.url + "/console/assets/app.py", timeout=30)
    assert missing.status_code == 404 and "no such file" in _reason(missing)
    assert httpx.get(app.url + "/console/assets/..%2F..%2Fapp.py", timeout=30).status_code == 404


def test_data_routes_need_the_key(app):
    for key in (None, "wrong"):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        assert httpx.get(app.url + "/console/suite", headers=headers, timeout=30).status_code == 401
        assert _post(app, "/console/check", {"replies": ["hi"]}, key=key).status_code == 401
        assert _post(app, "/console/save", {}, key=key).status_code == 401


def test_suite_route_gives_the_system_prompt_and_probes(app):
    suite = load_suite(DEMO_SUITE)
    got = httpx.get(app.url + "/console/suite", headers={"authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert got["suite"] == suite.name and got["system_prompt"] == suite.persona.system_prompt
    assert [p["id"] for p in got["probes"]] == [p.id for p in suite.all_probes()]
    assert got["conditions"] == ["with_system", "without_system"] and got["max_tokens_limit"] == LIMITS["max_tokens"]


def test_check_route_is_yard_probes_grade(app):
    suite = load_suite(DEMO_SUITE)
    city = next(p for p in suite.all_probes() if p.id == "city-2")
    for replies, probe, expected in ((["As an AI, I can't drink coffee."], None, []),
                                     (["<think>hm</think>Seoul"], "city-2", suite.expected_for(city))):
        resp = _post(app, "/console/check", {"replies": replies, "probe": probe})
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
        {"model": m, "system_prompt": False} for m in MODELS]}, 400, "nothing to save"),
    ("/console/save", {"started_at": "t", "settings": {"max_tokens": 8, "temperature": 0}, "columns": [
        {"model": m, "system_prompt": False, "exchanges": [{"probe": None, "condition": "without_system",
                                                            "turns": [{"user": "hi", "reply": "hello"}]}]}
        for m in ("llama-a", "gpt-9")]}, 400, "'gpt-9' is not served"),
    ("/console/save", {"started_at": "t", "settings": {"max_tokens": 8, "temperature": 0}, "columns": [
        {"model": m, "system_prompt": False, "exchanges": [{"probe": "who-ko", "condition": "without_system",
                                                            "turns": [{"user": "not the probe", "reply": "x"}]}]}
        for m in MODELS]}, 400, "not the turns of probe"),
])
def test_bad_requests_answer_4xx_with_one_line(app, path, body, status, reason):
    resp = _post(app, path, body)
    assert resp.status_code == status and reason in _reason(resp)


def test_malformed_bodies_do_not_harm_other_requests(app):
    assert _post(app, "/console/save", raw=b"{not json").status_code == 400
    assert _post(app, "/console/save", raw=b"[1, 2]").status_code == 400
    wrong_type = httpx.post(app.url + "/console/check", content=b"x", timeout=30,
                            headers={"authorization": f"Bearer {KEY}", "content-type": "text/plain"})
    assert wrong_type.status_code == 415
    assert httpx.get(app.url + "/health", timeout=30).json() == {"status": "ok"}
    assert _post(app, "/console/check", {"replies": ["hello"]}).json()["passed"] is True


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


def test_console_in_a_browser(app, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = _browser()
    try:
        wait = WebDriverWait(browser, 180)
        browser.get(app.url + "/")
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
        for column, model in zip(columns, MODELS):
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
    (row,) = [r for r in list_probe_runs(app.store) if r["run"] == run]
    assert row["source"] == "console" and row["status"] == "ok" and row["candidates"] == 2
    records = app.store.get_json(run + "/results.json")
    assert sorted({r["candidate"] for r in records}) == sorted(MODELS) and len(records) == 4
    assert all(r["replies"][0].strip() and {"claims_ai", "think_leak", "refusal"} <= set(r["rules"]) for r in records)
    conditions = {(r["candidate"], r["condition"]) for r in records}
    assert conditions == {("llama-a", "with_system"), ("qwen3-b", "without_system")}
    assert {r["probe"] for r in records} == {"manual-1", "city-2"}
