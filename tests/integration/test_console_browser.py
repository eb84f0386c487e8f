"""The console in a real headless Chromium (Debian ``chromium`` + ``chromium-driver``, as the sign-in page
tests drive it), one browser session per database: the real SMART sign-in, every page (a screenshot of
each), a replay of a stored HL7 v2 message and an outbox retry through the UI, the keyboard, and a label on
every control."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Backend, wait_until
from tests.integration.test_auth_browser import browser  # noqa: F401 (the Chromium fixture)
from tests.integration.test_auth_support import PASSWORD, Smart, smart_server
from tests.integration.test_console_support import BAD_BIRTH_DATE, dead_outbox_row, seed_hl7

UNLABELLED = """return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')).map(el => el.outerHTML)
  .concat([...document.querySelectorAll('button, a')]
  .filter(el => !(el.textContent.trim() || el.getAttribute('aria-label'))).map(el => el.outerHTML));"""


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    backend.truncate()
    yield from smart_server(backend)


def test_the_console_in_chromium(smart: Smart, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver

    driver: WebDriver = browser
    driver.set_window_size(1280, 1400)  # the screenshots show a page as an operator's screen does
    # pytest's tmp_path as the sign-in page tests use; FHIR_TEST_SCREENSHOTS keeps them somewhere of your own.
    shots = Path(os.environ["FHIR_TEST_SCREENSHOTS"]) / smart.backend.name if os.environ.get(
        "FHIR_TEST_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    ids = seed_hl7(smart)
    dead = dead_outbox_row(smart)
    patient = smart.as_admin("POST", "Patient", json={"resourceType": "Patient", "name": [{"family": "Chromium"}]})
    pid = patient.json()["id"]
    obs = smart.as_admin("POST", "Observation", json={"resourceType": "Observation", "status": "final",
                                                      "code": {"text": "potassium"},
                                                      "subject": {"reference": f"Patient/{pid}"}}).json()
    sub = smart.as_admin("POST", "Subscription", json={
        "resourceType": "Subscription", "status": "requested", "reason": "ward board",
        "criteria": "Observation?code=potassium", "channel": {"type": "websocket"}})
    assert sub.status_code == 201, sub.text
    user = smart.user("admin")

    def check(name: str) -> None:
        """Every page: one h1, a label on every control, no script; its screenshot."""
        assert len(driver.find_elements(By.TAG_NAME, "h1")) == 1, name
        assert driver.execute_script(UNLABELLED) == [], name
        assert "<script" not in driver.page_source
        driver.save_screenshot(str(shots / f"console-{name}.png"))

    # Signing in: the console's door, then the server's own sign-in page, with the keyboard only.
    driver.delete_all_cookies()
    driver.get(f"{smart.root}/console/hl7")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Sign in"
    check("sign-in")
    assert driver.switch_to.active_element.get_attribute("id") == "sign-in"  # focus starts on the button
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    wait_until(lambda: driver.find_elements(By.ID, "username"), 15, "the SMART sign-in page")
    assert "the FHIR console" in driver.find_element(By.TAG_NAME, "h1").text
    driver.switch_to.active_element.send_keys(user, Keys.TAB)
    driver.switch_to.active_element.send_keys(PASSWORD, Keys.ENTER)
    wait_until(lambda: driver.current_url.endswith("/console/hl7"), 15, "back to the page asked for")

    # HL7 v2 messages: counts, search with the keyboard, one message masked, its replay.
    check("hl7")
    assert driver.find_element(By.ID, "count-error").text == "1"
    field = driver.find_element(By.ID, "f-patient")
    field.send_keys("555-44-4444", Keys.ENTER)
    wait_until(lambda: "patient=555-44-4444" in driver.current_url, 15, "the search")
    links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#messages a")]
    assert links == [f"{smart.root}/console/hl7/messages/{ids[k]}" for k in ("error", "ok")]  # the same patient
    driver.get(f"{smart.root}/console/hl7/messages/{ids['error']}")
    check("hl7-message")
    raw = driver.find_element(By.ID, "raw").text
    assert raw.startswith("MSH|") and "***" in raw and BAD_BIRTH_DATE not in driver.page_source
    attempts = int(driver.find_element(By.ID, "attempts").text)
    driver.find_element(By.ID, "replay").send_keys(Keys.ENTER)
    wait_until(lambda: driver.find_elements(By.ID, "flash"), 15, "the replay's outcome")
    assert "replayed: now error" in driver.find_element(By.ID, "flash").text
    assert int(driver.find_element(By.ID, "attempts").text) == attempts + 1

    # Keyboard navigation: the skip link first, then the console's navigation; Enter follows a link.
    driver.get(f"{smart.root}/console")
    check("overview")
    assert driver.find_element(By.ID, "ready").text == "yes"
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert driver.switch_to.active_element.text == "Skip to content"
    order = []
    for _ in range(8):
        driver.switch_to.active_element.send_keys(Keys.TAB)
        order.append(driver.switch_to.active_element.text)
    assert order[:7] == ["Overview", "HL7 v2 messages", "Outbox", "Bulk jobs", "Subscriptions", "Users and clients",
                         "Resources"], order
    assert order[7] == "Sign out"
    for _ in range(5):  # and back, from Sign out to Outbox
        driver.switch_to.active_element.send_keys(Keys.SHIFT, Keys.TAB)
    assert driver.switch_to.active_element.text == "Outbox"
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    wait_until(lambda: driver.current_url.endswith("/console/outbox"), 15, "the outbox page")

    # The outbox: a dead letter with its last error, retried from the page.
    check("outbox")
    row = driver.find_element(By.ID, f"row-{dead}")
    assert "HTTP 503 from the lab system" in row.text and row.find_element(By.CLASS_NAME, "status").text == "dead"
    driver.find_element(By.ID, f"retry-{dead}").send_keys(Keys.ENTER)
    wait_until(lambda: driver.find_elements(By.ID, "flash"), 15, "the retry's outcome")
    assert "1 row made due again" in driver.find_element(By.ID, "flash").text
    assert driver.find_element(By.ID, f"row-{dead}").find_element(By.CLASS_NAME, "status").text == "pending"

    for name, path in (("jobs", "/jobs"), ("subscriptions", "/subscriptions"),
                       ("subscription", f"/subscriptions/{sub.json()['id']}"), ("people", "/people"),
                       ("resources", "/resources?type=Observation&criteria=code%3Apotassium")):
        driver.get(f"{smart.root}/console{path}")
        check(name)
    driver.get(f"{smart.root}/console/resources?type=Observation&criteria=subject%3D{pid}")
    driver.find_element(By.LINK_TEXT, f"Observation/{obs['id']}").send_keys(Keys.ENTER)
    wait_until(lambda: driver.current_url.endswith(f"/Observation/{obs['id']}"), 15, "the Observation")
    check("resource")
    driver.find_element(By.LINK_TEXT, f'"Patient/{pid}"').send_keys(Keys.ENTER)  # follow the reference
    wait_until(lambda: driver.current_url.endswith(f"/Patient/{pid}"), 15, "the Patient it refers to")
    assert "Chromium" in driver.find_element(By.ID, "resource").text
    assert len(list(shots.glob("console-*.png"))) == 11
