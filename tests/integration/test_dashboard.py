"""The dashboard in a real browser (Debian's chromium, headless, through its chromedriver): over
the canned answers of `dashboard_fixture` (served by the coordinator's own HTTP app), the team's
token is taken from the URL fragment, and without a good token the page says how to open it;
while a job runs on a real service, the job, its steps, a failed task's error and a trace
appear. `.ci/run` installs chromium when it is missing; the screenshot lands in
`test-artifacts/`."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import visibility_of_element_located
from selenium.webdriver.support.ui import WebDriverWait

from gristmill import Pipeline
from gristmill.credentials import read_credentials
from gristmill.embedded import EmbeddedService
from gristmill.executors.service import ServiceExecutor
from gristmill.stages.text.io import JsonlReader, JsonlWriter

import dashboard_fixture
from service_helpers import (
    ROOT,
    client_call,
    fifos,
    finished,
    read_fifo,
    run_in_thread,
    service_under,
    until,
)
from service_stages import GateOn, PoisonOn

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    assert not missing, f"install Debian's chromium and chromium-driver (missing: {missing})"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1440,2000")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def canned() -> Iterator[str]:
    """The URL of `dashboard_fixture.app`, served on a free port."""
    server = uvicorn.Server(
        uvicorn.Config(dashboard_fixture.app, host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    until(lambda: server.started or not thread.is_alive(), "the fixture's server to listen")
    assert server.started, "the dashboard fixture's server did not start"
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    yield f"http://{host}:{port}"
    server.should_exit = True
    thread.join(10)


def stored_token(browser: Any) -> str | None:
    token: str | None = browser.execute_script("return sessionStorage.getItem('gristmill.token')")
    return token


def test_the_dashboard_takes_its_token_from_the_fragment_and_out_of_the_address_bar(
    canned: str, browser: Any
) -> None:
    job = dashboard_fixture.FAILED_JOB
    browser.get(f"{canned}/#token={dashboard_fixture.TOKEN}&job={job}")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'#jobs tr.job[data-job="{job}"]'))
    assert browser.current_url == f"{canned}/#job={job}"
    assert stored_token(browser) == dashboard_fixture.TOKEN
    error = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#failures .failure .error"))
    assert error.text == dashboard_fixture.POISON_ERROR
    assert not browser.find_element(By.ID, "auth").is_displayed()
    rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tr.job")
    assert [r.get_attribute("data-job") for r in rows] == [dashboard_fixture.RUNNING_JOB, job]


def test_without_a_good_token_the_dashboard_says_how_to_open_it(canned: str, browser: Any) -> None:
    browser.get(f"{canned}/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait = WebDriverWait(browser, 30)
    notice = wait.until(visibility_of_element_located((By.ID, "auth")))
    assert notice.text.startswith(
        f"This dashboard needs the team's token: open the URL `gristmill up` printed "
        f"({canned}/#token=…)"
    )
    assert not browser.find_element(By.ID, "jobs").is_displayed()
    assert not browser.find_element(By.ID, "offline").is_displayed()

    browser.get(f"{canned}/#token=not-the-token")
    wait.until(
        lambda d: "does not know this dashboard's token" in d.find_element(By.ID, "auth").text
    )
    assert browser.current_url == f"{canned}/"
    assert browser.find_element(By.ID, "conn").text == "token needed"

    browser.get(f"{canned}/#token={dashboard_fixture.TOKEN}")  # a new fragment: polling resumes
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs tr.job") or None)
    assert not browser.find_element(By.ID, "auth").is_displayed()
    assert browser.current_url == f"{canned}/"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dashboard")


@pytest.fixture(scope="module")
def service(base: Path) -> Iterator[EmbeddedService]:
    with service_under(base, workers=1, slots=2) as running:
        yield running


def test_the_dashboard_shows_a_running_job_its_failure_and_its_trace(
    service: EmbeddedService, browser: Any, base: Path
) -> None:
    tmp_path = base / "job"
    tmp_path.mkdir()
    source = tmp_path / "in"
    source.mkdir()
    for part, texts in enumerate((["held"], ["POISON"], ["fine"])):
        rows = [{"id": f"p{part}-{n}", "text": t} for n, t in enumerate(texts)]
        (source / f"part-{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gate = fifos(tmp_path / "gate", "started", "release")
    pipeline = Pipeline(
        "dashboard",
        [
            JsonlReader(file_paths=str(source)),
            GateOn("p0-0", str(gate)),
            PoisonOn("POISON"),
            JsonlWriter(path=str(tmp_path / "out")),
        ],
    )
    executor = ServiceExecutor(service.url, config={"max_deliver": 1, "allow_failures": True})
    thread = run_in_thread(pipeline, executor)
    read_fifo(gate / "started")  # one task is held: the job stays running
    job = until(lambda: executor.job, "the job id")

    def failed_and_traced() -> bool:
        [state] = client_call(service, lambda c: c.status(job))
        if state.tasks_failed != 1 or state.finished:
            return False
        spans = client_call(service, lambda c: c.trace(job))["spans"]
        return any(s["status"] == "error" for s in spans)

    until(failed_and_traced, "the poisoned task's dead letter and its span")

    token = read_credentials(service.credentials()).http_token
    browser.get(f"{service.http_url}/#token={token}&job={job}")
    wait = WebDriverWait(browser, 30)
    row = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'#jobs tr.job[data-job="{job}"]'))
    assert "token" not in browser.current_url
    wait.until(lambda d: "running" in row.text)
    steps = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#steps .step") or None)
    assert [s.text.splitlines()[0] for s in steps] == [
        "0. file_partitioning",
        "1. jsonl_reader+GateOn+PoisonOn+jsonl_writer",
    ]
    error = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#failures .failure .error"))
    assert "ValueError: poisoned batch" in error.text
    spans = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#waterfall .span.error") or None)
    assert "poisoned batch" in spans[0].text
    assert browser.find_elements(By.CSS_SELECTOR, "#waterfall .span.critical")
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))

    (gate / "release").write_text("go\n")
    finished(thread)
    assert executor.state is not None
    assert (executor.state.tasks_done, executor.state.tasks_failed) == (2, 1)
