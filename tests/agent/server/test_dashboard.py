"""The dashboard in a real browser: headless Chromium from Debian's packages (chromium,
chromium-driver; .ci/browser.sh installs them) driven by Selenium. The browser logs in with
the link `cllm serve` prints (/?token=..., which leaves the address bar), each tab renders
real data of a tiny trained data directory under the server's Content-Security-Policy (no
violation logged), a chat reply streams into the page, a crawl target added from the page
is recorded in the store (and removed again), and a cycle committed while the page is open
appears without a reload (the /api/events stream).

Waiting is event-driven: the page is watched with a MutationObserver until a condition
holds. With $CLLM_DASHBOARD_SCREENSHOTS set to a folder, each tab's screenshot is kept there
(docs/dashboard-*.png come from this test).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from store import controls, open_store
from store.targets import list_targets
from tests.agent.server.conftest import token_of, train_tiny, wait_loaded

pytestmark = pytest.mark.slow
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TABS = ("training", "crawler", "llm", "research", "benchmark")


@pytest.fixture(scope="module")
def browser():
    for exe in (CHROMIUM, DRIVER):
        if not Path(exe).exists():
            pytest.fail(f"{exe} is missing: apt-get install chromium chromium-driver "
                        "(.ci/browser.sh)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})   # CSP violations land there
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_js(driver, condition: str, what: str) -> None:
    """Block until the JavaScript expression `condition` is true, re-checking it on every
    change of the page (a MutationObserver), not on a timer. The expression is part of the
    script the driver injects, not eval'd in the page: the page's Content-Security-Policy
    forbids eval, as it should."""
    try:
        ok = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const check = () => {
            try { return Boolean(%s); } catch (e) { return false; } };
        if (check()) { done(true); return; }
        const obs = new MutationObserver(() => {
            if (check()) { obs.disconnect(); done(true); } });
        obs.observe(document,
                    {subtree: true, childList: true, attributes: true, characterData: true});
    """ % condition)
    except TimeoutException:
        logged = [e["message"] for e in driver.get_log("browser")]
        pytest.fail(f"the page never showed: {what} (at {driver.current_url}; the browser "
                    f"logged {logged})")
    assert ok, what


def shot(driver, tmp_path, name: str) -> None:
    driver.execute_script("window.scrollTo(0, 0)")
    path = tmp_path / f"dashboard-{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 1000
    keep = os.environ.get("CLLM_DASHBOARD_SCREENSHOTS")
    if keep:
        shutil.copy(path, Path(keep) / path.name)


def log_in(driver, server) -> None:
    """Open the dashboard link `cllm serve` prints: the cookie is set and the token leaves
    the address bar (a 303 to the page without it)."""
    driver.get(f"{server.url}/?token={token_of(server)}")
    wait_js(driver, "document.querySelector('#tab-training').dataset.loaded >= 1", "page loaded")
    assert driver.current_url.split("#")[0] == server.url + "/"     # the page tab in the hash


def csp_violations(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser")
            if "Content Security Policy" in e["message"] or "Refused to" in e["message"]]


def open_tab(driver, url: str, tab: str) -> None:
    driver.get(f"{url}/#{tab}")
    wait_js(driver, f"document.querySelector('#tab-{tab}').dataset.loaded >= 1", f"{tab} loaded")


def rows(driver, table: str) -> list[list[str]]:
    return driver.execute_script(
        f"return [...document.querySelectorAll('{table} tr')].slice(1)"
        ".map(r => [...r.cells].map(c => c.textContent));")


def test_each_tab_renders_the_data_directory(serve, trained, browser, tmp_path):
    server = serve(trained)
    wait_loaded(server)
    d, u = browser, server.url
    csp_violations(d)                        # drop what earlier pages logged
    log_in(d, server)
    open_tab(d, u, "training")
    wait_js(d, "document.querySelector('#live').textContent === 'live'", "event stream open")
    assert [r[0] for r in rows(d, "#cycles-table")] == ["2", "1"]
    cycles = d.execute_script("return [...document.querySelectorAll('#loss-chart .loss-line')]"
                              ".map(l => l.dataset.cycle)")
    assert cycles == ["1", "2"]
    assert "2 cycles completed" in d.find_element(By.ID, "agent-state").text
    assert d.find_element(By.ID, "model-id").text == f"cllm-{trained.name}-cycle-2"
    heads = d.execute_script("return [...document.querySelectorAll('#cycles-table th')]"
                             ".map(h => h.textContent)")
    rate = [r[heads.index("tokens/s")] for r in rows(d, "#cycles-table")]
    assert all(re.fullmatch(r"\d{1,3}(,\d{3})*", v) for v in rate), rate   # 7,166, not 7166.156
    shot(d, tmp_path, "training")

    open_tab(d, u, "crawler")
    docs = rows(d, "#documents-table")
    assert sorted(r[3].rsplit("/", 1)[-1] for r in docs) == ["a.txt", "b.txt"]
    assert d.find_elements(By.CSS_SELECTOR, "#doc-status span[data-status]")
    shot(d, tmp_path, "crawler")

    open_tab(d, u, "research")
    assert len(d.find_elements(By.CSS_SELECTOR, "#vocab-chart rect.bar")) == 2   # a bar a cycle
    assert rows(d, "#vocab-table")
    n_eval = len(httpx.get(u + "/api/forgetting",
                           headers={"Authorization": f"Bearer {token_of(server)}"}).json())
    assert len(d.find_elements(By.CSS_SELECTOR, "#forgetting-heatmap rect.cell")) == n_eval > 0
    d.find_element(By.CSS_SELECTOR, "#neighbours-form button").click()
    wait_js(d, "document.querySelectorAll('#neighbours-table tr').length === 13",
            "12 neighbours listed")
    shot(d, tmp_path, "research")

    open_tab(d, u, "benchmark")
    d.find_element(By.ID, "bench-workers").clear()
    d.find_element(By.ID, "bench-workers").send_keys("1")
    d.find_element(By.ID, "bench-run").click()
    wait_js(d, "document.querySelector('#bench-status').textContent === 'done'", "bench ran")
    assert "preset tiny" in d.find_element(By.ID, "bench-lines").text
    assert len(d.find_elements(By.CSS_SELECTOR, "#bench-chart rect.bar")) == 1
    shot(d, tmp_path, "benchmark")
    assert csp_violations(d) == []


def test_a_chat_reply_streams_into_the_page(serve, trained, browser, tmp_path):
    server = serve(trained)
    wait_loaded(server)
    d = browser
    log_in(d, server)
    open_tab(d, server.url, "llm")
    options = [o.text for o in d.find_elements(By.CSS_SELECTOR, "#llm-checkpoint option")]
    assert options[0] == "latest" and {"cycle 1 (step 8)", "cycle 2 (step 16)"} <= set(options)
    d.find_element(By.ID, "llm-temperature").clear()
    d.find_element(By.ID, "llm-temperature").send_keys("0")
    d.find_element(By.ID, "llm-max-tokens").clear()
    d.find_element(By.ID, "llm-max-tokens").send_keys("12")
    d.find_element(By.ID, "llm-prompt").send_keys("hello crystal")
    d.find_element(By.ID, "llm-send").click()
    wait_js(d, "document.querySelector('#llm-status').dataset.done === 'true'", "reply done")
    status = d.find_element(By.ID, "llm-status")
    chunks = int(status.get_attribute("data-chunks"))
    reply = d.execute_script("return document.querySelector('#llm-output').textContent")
    assert chunks > 1 and reply, status.text      # the reply came in pieces, as they were made
    turns = d.find_elements(By.CSS_SELECTOR, "#llm-log .turn")
    assert [t.find_element(By.CLASS_NAME, "who").text for t in turns] == ["you", "cllm"]
    shot(d, tmp_path, "llm")


def test_adding_a_crawl_target_from_the_page_records_it_in_the_store(serve, trained, browser,
                                                                     tmp_path):
    def targets():
        with open_store(trained) as store, store.session(read_only=True) as s:
            return [(t.id, t.kind, t.location) for t in list_targets(s)]

    before = targets()
    server = serve(trained)
    d = browser
    log_in(d, server)
    open_tab(d, server.url, "crawler")
    folder = tmp_path / "more notes"
    folder.mkdir()
    d.find_element(By.ID, "target-location").send_keys(str(folder))
    d.find_element(By.ID, "target-add").click()
    wait_js(d, "document.querySelector('#target-message').textContent.includes('recorded')",
            "target recorded")
    added = [t for t in targets() if t not in before]
    assert [(k, Path(loc).name) for _, k, loc in added] == [("crawl", "more notes")]
    wait_js(d, "[...document.querySelectorAll('#targets-table td')].some(c => "
               "c.textContent.endsWith('more notes'))", "target listed")
    # the table is redrawn on each store event: find and click the button in one step
    d.execute_script(f"document.querySelector(\".remove-target[data-id='{added[0][0]}']\").click()")
    wait_js(d, "document.querySelector('#target-message').textContent.includes('removed')",
            "target removed")
    assert targets() == before


def test_pausing_training_from_the_page_sets_the_stores_control(serve, trained, browser):
    def paused():
        with open_store(trained) as store, store.session(read_only=True) as s:
            return controls.paused(s)

    server = serve(trained)
    d = browser
    log_in(d, server)
    open_tab(d, server.url, "training")
    wait_js(d, "document.querySelector('#pause-training').textContent === 'Pause training'",
            "pause button")
    assert not paused()
    d.find_element(By.ID, "pause-training").click()
    wait_js(d, "document.querySelector('#pause-training').textContent === 'Resume training'",
            "resume button")
    assert paused()
    d.find_element(By.ID, "pause-training").click()
    wait_js(d, "document.querySelector('#pause-training').textContent === 'Pause training'",
            "pause button again")
    assert not paused()


def test_a_cycle_committed_while_the_page_is_open_appears_live(serve, corpus, browser,
                                                               tmp_path):
    data = tmp_path / "data"
    train_tiny(corpus, data)
    server = serve(data)
    wait_loaded(server)
    d = browser
    log_in(d, server)
    open_tab(d, server.url, "training")
    wait_js(d, "document.querySelector('#live').textContent === 'live'", "event stream open")
    assert len(rows(d, "#cycles-table")) == 1
    train_tiny(corpus, data)                 # another process's cycle, as an agent's would be
    wait_js(d, "document.querySelectorAll('#cycles-table tr').length === 3 && "
               "document.querySelector('#model-id').textContent.endsWith('cycle-2')",
            "the new cycle and model appear")
    assert int(d.find_element("id", "live").get_attribute("data-events")) >= 1


def test_the_trainer_phase_shows_while_an_agent_runs(serve, trained, browser, tmp_path):
    from agent.datadir import DataDirLock

    data = tmp_path / "data"
    shutil.copytree(trained, data)
    with open_store(data) as store, store.session() as s:
        controls.set_trainer_phase(s, "converged", "held-out loss has not improved")
    server = serve(data)
    with DataDirLock(data):                      # an agent runs on it
        log_in(browser, server)
        open_tab(browser, server.url, "training")
        wait_js(browser, "document.querySelector('#agent-state').textContent"
                ".includes('training: converged (held-out loss has not improved)')",
                "the trainer's phase")


def test_why_training_is_paused_shows_while_an_agent_runs(serve, trained, browser, tmp_path):
    """A trainer paused on battery (issue 27): the page says so, and the pause button stays
    the user's (nobody paused it from here)."""
    from agent.datadir import DataDirLock

    data = tmp_path / "data"
    shutil.copytree(trained, data)
    why = "the machine runs on battery (--pause-on-battery; it resumes on mains power)"
    with open_store(data) as store, store.session() as s:
        controls.set_trainer_phase(s, "paused", why, paused_by=["battery"])
    server = serve(data)
    with DataDirLock(data):                      # an agent runs on it
        log_in(browser, server)
        open_tab(browser, server.url, "training")
        wait_js(browser, "document.querySelector('#agent-state').textContent"
                f".includes('training paused: {why}')", "why training is paused")
        assert browser.find_element(By.ID, "pause-training").text == "Pause training"
