"""The sign-in and consent page driven by a real headless Chromium (Debian ``chromium`` + ``chromium-driver``),
with the keyboard only, on both databases."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.conftest import Backend, wait_until
from tests.integration.test_auth_support import PASSWORD, Smart, exchange, pkce, smart_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are required under CI (scripts/test.sh installs them)")
        pytest.skip("chromium / chromium-driver not installed (scripts/test.sh installs them)")
    from selenium import webdriver

    profile = tempfile.mkdtemp(prefix="fhir-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _authorize_url(smart: Smart, client_id: str, redirect: str, scope: str, challenge: str) -> str:
    return f"{smart.root}/auth/authorize?" + urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect, "scope": scope,
        "state": "browser-state", "aud": smart.base, "code_challenge": challenge, "code_challenge_method": "S256"})


def test_sign_in_and_consent_with_the_keyboard(smart: Smart, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver

    driver: WebDriver = browser  # type: ignore[assignment]
    redirect = f"{smart.root}/healthz"  # any page of ours will do as the app's landing page
    scope = "openid fhirUser user/*.rs offline_access"
    user = smart.user("doctor", "Practitioner/browser-doc")
    client = smart.client(["authorization_code"], scope, redirect_uris=[redirect], public=True)
    verifier, challenge = pkce()
    driver.delete_all_cookies()
    driver.get(_authorize_url(smart, client["client_id"], redirect, scope, challenge))
    assert "Sign in to allow" in driver.find_element(By.TAG_NAME, "h1").text
    source = driver.page_source
    assert "<script" not in source and "<link" not in source  # no scripts, no external assets
    items = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "ul li")]
    assert "Read, search all data you can access" in items
    # Wrong password first: the same page again with an alert, no redirect.
    active = driver.switch_to.active_element
    assert active.get_attribute("id") == "username"  # focus starts in the first field
    active.send_keys(user, Keys.TAB)
    driver.switch_to.active_element.send_keys("Not-The-Password-1", Keys.ENTER)
    wait_until(lambda: driver.find_elements(By.ID, "error"), 10, "the sign-in error")
    assert "username or password is not right" in driver.find_element(By.ID, "error").text
    assert urlsplit(driver.current_url).path == "/auth/authorize"
    # Now right: Tab from the username to the password, Enter submits "Allow".
    field = driver.find_element(By.ID, "username")
    field.clear()
    field.send_keys(user, Keys.TAB)
    driver.switch_to.active_element.send_keys(PASSWORD, Keys.ENTER)
    wait_until(lambda: driver.current_url.startswith(redirect), 15, "the redirect to the app")
    params = parse_qs(urlsplit(driver.current_url).query)
    assert params["state"] == ["browser-state"]
    token = exchange(smart, client["client_id"], params["code"][0], redirect, verifier)
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["fhirUser"] == "Practitioner/browser-doc" and body["id_token"] and body["refresh_token"]
    assert smart.fhir("GET", "Patient", body["access_token"]).status_code == 200


def test_deny_with_the_keyboard(smart: Smart, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver

    driver: WebDriver = browser  # type: ignore[assignment]
    redirect = f"{smart.root}/healthz"
    client = smart.client(["authorization_code"], "user/*.rs", redirect_uris=[redirect], public=True)
    _, challenge = pkce()
    driver.get(_authorize_url(smart, client["client_id"], redirect, "user/*.rs", challenge))
    allow = driver.find_element(By.ID, "allow")
    allow.send_keys(Keys.TAB)  # keyboard focus moves from Allow to Deny
    focused = driver.switch_to.active_element
    assert focused.get_attribute("id") == "deny"
    focused.send_keys(Keys.ENTER)
    wait_until(lambda: driver.current_url.startswith(redirect), 15, "the redirect to the app")
    params = parse_qs(urlsplit(driver.current_url).query)
    assert params["error"] == ["access_denied"] and "code" not in params
