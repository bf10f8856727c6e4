"""The DAG through Airflow's own UI in Debian's headless Chromium, driven by selenium (its
chromedriver, no browser download): log in, the trigger form opens ready and submits, the
Backfill tab can be submitted for a date range, and the finished run's report task opens the
curation report, thumbnails and all, from the api-server."""

from __future__ import annotations

import os
import shutil
from urllib.parse import quote

import pytest

from tests.dags.curation import TRIGGER_DATE, report_url
from tests.dags.deployment import DAG_ID

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT = 60

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
        reason="needs Debian's chromium and chromium-driver (scripts/test.sh installs them)",
    ),
]


@pytest.fixture(scope="module")
def browser(curation, tmp_path_factory):
    """Headless Chromium logged in as the deployment's admin through the login page."""
    assert CHROMIUM and CHROMEDRIVER, "CI installs chromium and chromium-driver (scripts/test.sh)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        dep = curation.deployment
        driver.get(f"{dep.url}/dags/{DAG_ID}")
        field(driver, "input[name=username]").send_keys("admin")
        field(driver, "input[name=password]").send_keys(dep.passwords["admin"])
        field(driver, "button[type=submit]").click()
        wait(driver).until(lambda d: d.current_url == f"{dep.url}/dags/{DAG_ID}")
        yield driver
    finally:
        driver.quit()


def wait(driver, seconds: float = WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds)


def field(driver, css: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    return wait(driver).until(ec.element_to_be_clickable((By.CSS_SELECTOR, css)))


def by_text(driver, tag: str, text: str):
    from selenium.webdriver.common.by import By

    xpath = f"//{tag}[normalize-space(.)='{text}']"
    return wait(driver).until(lambda d: d.find_element(By.XPATH, xpath))


def open_trigger_form(driver, url: str) -> None:
    driver.get(f"{url}/dags/{DAG_ID}")
    field(driver, "[data-testid=trigger-dag-button]").click()


def test_trigger_form_opens_ready_with_the_defaults_and_submits(browser, curation):
    dep = curation.deployment
    before = {r["dag_run_id"] for r in dep.api("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]}
    open_trigger_form(browser, dep.url)
    submit = field(browser, "[data-testid=trigger-dag-submit]")  # waits until enabled
    assert submit.is_enabled()
    dataset = field(browser, "input[name=element_dataset]")
    assert dataset.get_attribute("value") == ""  # empty: the run's dated drop
    submit.click()
    new = dep.wait_for(
        lambda: [
            r
            for r in dep.api("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]
            if r["dag_run_id"] not in before and r["run_type"] == "manual"
        ],
        WAIT,
        "the run the form triggered",
    )
    (run,) = new
    conf = run["conf"]
    assert conf["dataset"] is None and conf["output"] is None and conf["execution"] is None
    defaults = dep.api("GET", f"/dags/{DAG_ID}/details")["params"]
    assert conf["model"] == defaults["model"]["value"]  # the deployment's CURATOR_PARAMS


def test_backfill_tab_can_be_submitted_for_a_date_range(browser, curation):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_trigger_form(browser, curation.deployment.url)
    by_text(browser, "span", "Backfill").click()
    run_backfill = by_text(browser, "button", "Run Backfill")
    assert not run_backfill.is_enabled()  # no dates yet
    for picker, day in zip(
        browser.find_elements(By.CSS_SELECTOR, "[data-testid=datetime-input]"),
        ("2026/02/01", "2026/02/03"),
    ):
        picker.click()
        date = field(
            browser, "[data-part=content][data-state=open] input[placeholder='YYYY/MM/DD']"
        )
        date.send_keys(day)
        time_input = browser.find_element(
            By.CSS_SELECTOR, "[data-part=content][data-state=open] input[placeholder='HH:mm']"
        )
        time_input.send_keys("00:00", Keys.ESCAPE)
    wait(browser).until(lambda d: by_text(d, "button", "Run Backfill").is_enabled())


def test_report_link_opens_the_report_served_by_the_api_server(browser, curation):
    from selenium.webdriver.common.by import By

    dep, run = curation.deployment, curation.rerun
    browser.get(f"{dep.url}/dags/{DAG_ID}/runs/{quote(run.run_id, safe='')}/tasks/report")
    by_text(browser, "a", "Details").click()  # the task's extra links are on its Details tab
    link = by_text(browser, "a", "Curation report")
    assert link.get_attribute("href") == dep.url + report_url(dep, run.run_id)
    tabs = set(browser.window_handles)
    link.click()
    wait(browser).until(lambda d: len(d.window_handles) > len(tabs) or "/curator/" in d.current_url)
    if len(browser.window_handles) > len(tabs):  # other origins open in a new tab
        browser.switch_to.window((set(browser.window_handles) - tabs).pop())
    wait(browser).until(lambda d: d.find_elements(By.TAG_NAME, "h1"))
    assert browser.current_url == dep.url + report_url(dep, run.run_id)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Curation report"
    thumbs = [
        i
        for i in browser.find_elements(By.CSS_SELECTOR, "img")
        if (i.get_attribute("src") or "").startswith("data:image/jpeg;base64,")
    ]
    assert len(thumbs) >= 6
    assert all(  # decoded and drawn, not broken images
        browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in thumbs
    )
    assert f"drops/{TRIGGER_DATE}" in browser.find_element(By.TAG_NAME, "body").text
