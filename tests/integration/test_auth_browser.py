"""The sign-in and consent page driven by a real headless Chromium (Debian ``chromium`` + ``chromium-driver``),
with the keyboard only, on both databases."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
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


def test_patient_picker_after_sign_in(smart: Smart, browser: object, tmp_path: object) -> None:
    """launch/patient: sign in first (no patient id asked), then search and pick among readable patients."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver

    driver: WebDriver = browser  # type: ignore[assignment]
    tag = uuid.uuid4().hex[:6]
    ids = {}
    for family, mrn in ((f"Picker{tag}", "MRN-1"), (f"Other{tag}", "MRN-2")):
        created = smart.as_admin("POST", "Patient", json={
            "resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], "birthDate": "1980-02-03",
            "identifier": [{"system": "urn:mrn", "value": f"{mrn}-{tag}"}]})
        ids[family] = created.json()["id"]
    redirect = f"{smart.root}/healthz"
    scope = "openid fhirUser launch/patient patient/*.rs"
    user = smart.user("doctor", "Practitioner/picker-doc")
    client = smart.client(["authorization_code"], scope, redirect_uris=[redirect], public=True)
    verifier, challenge = pkce()
    driver.delete_all_cookies()
    driver.get(_authorize_url(smart, client["client_id"], redirect, scope, challenge))
    assert not driver.find_elements(By.ID, "patient")  # nothing asked before signing in
    driver.find_element(By.ID, "username").send_keys(user, Keys.TAB)
    driver.switch_to.active_element.send_keys(PASSWORD, Keys.ENTER)
    wait_until(lambda: driver.find_elements(By.ID, "q_name"), 15, "the patient picker")
    assert "Choose the patient" in driver.find_element(By.TAG_NAME, "h1").text
    for field in ("q_name", "q_identifier", "q_birthdate"):  # every control has its label
        assert driver.find_elements(By.CSS_SELECTOR, f'label[for="{field}"]')
    driver.find_element(By.ID, "q_identifier").send_keys(f"MRN-1-{tag}")
    driver.find_element(By.ID, "search").send_keys(Keys.ENTER)
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#patients li"), 15, "the search results")
    listed = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#patients li")]
    assert len(listed) == 1 and f"Picker{tag}" in listed[0] and "born 1980-02-03" in listed[0]
    driver.save_screenshot(str(tmp_path) + "/patient-picker.png")  # type: ignore[operator]
    driver.find_element(By.ID, "allow").send_keys(Keys.ENTER)
    wait_until(lambda: driver.current_url.startswith(redirect), 15, "the redirect to the app")
    code = parse_qs(urlsplit(driver.current_url).query)["code"][0]
    token = exchange(smart, client["client_id"], code, redirect, verifier).json()
    assert token["patient"] == ids[f"Picker{tag}"] and token["need_patient_banner"] is True


def test_patient_user_is_never_asked_to_pick(smart: Smart, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver

    driver: WebDriver = browser  # type: ignore[assignment]
    own = smart.as_admin("POST", "Patient", json={"resourceType": "Patient", "active": True}).json()["id"]
    redirect = f"{smart.root}/healthz"
    scope = "openid fhirUser launch/patient patient/*.rs"
    user = smart.user("patient", f"Patient/{own}")
    client = smart.client(["authorization_code"], scope, redirect_uris=[redirect], public=True)
    verifier, challenge = pkce()
    driver.delete_all_cookies()
    driver.get(_authorize_url(smart, client["client_id"], redirect, scope, challenge))
    driver.find_element(By.ID, "username").send_keys(user, Keys.TAB)
    driver.switch_to.active_element.send_keys(PASSWORD, Keys.ENTER)
    wait_until(lambda: driver.current_url.startswith(redirect), 15, "the redirect to the app")
    code = parse_qs(urlsplit(driver.current_url).query)["code"][0]
    assert exchange(smart, client["client_id"], code, redirect, verifier).json()["patient"] == own
