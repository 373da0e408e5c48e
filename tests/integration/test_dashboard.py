"""The dashboard in a real browser (Debian's chromium, headless, through its chromedriver) while
a job runs on a real service: the job, its steps, a failed task's error and a trace appear.
`.ci/run` installs chromium when it is missing; the screenshot lands in `test-artifacts/`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from gristmill import Pipeline
from gristmill.embedded import EmbeddedService
from gristmill.executors.service import ServiceExecutor
from gristmill.stages.text.io import JsonlReader, JsonlWriter

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

    browser.get(f"{service.http_url}/#job={job}")
    wait = WebDriverWait(browser, 30)
    row = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'#jobs tr.job[data-job="{job}"]'))
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
