"""The operator console over real HTTP (httpx as the browser, the server's own SMART sign-in), on SQLite,
PostgreSQL and a tenant's schema (/t/{tenant}/console): who gets in, CSRF, masking, replay, retry, users and
clients, the resource browser, sign-out. The pages in a real browser: test_console_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import closing

import httpx
import pytest

from fhir_server.console.session import CLIENT_ID, CSRF, REFRESH, SESSION
from interfaces.mllp.store import MessageStore
from tests.conftest import TENANT_BACKENDS, Backend
from tests.integration.test_auth_support import PASSWORD, Smart, smart_server
from tests.integration.test_console_support import (
    BAD_BIRTH_DATE,
    csrf_of,
    dead_outbox_row,
    running_job,
    seed_hl7,
    sign_in,
)

pytestmark = pytest.mark.parametrize("backend", TENANT_BACKENDS, indirect=True)
PAGES = ("", "/hl7", "/outbox", "/jobs", "/subscriptions", "/people", "/resources")
ADMIN_PAGES = ("/people", "/resources")


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    backend.truncate()
    yield from smart_server(backend)


@pytest.fixture(scope="module")
def admin(smart: Smart) -> Iterator[httpx.Client]:
    browser, done = sign_in(smart, smart.user("admin"))
    assert done.status_code == 303 and done.headers["location"].endswith("/console"), done.text
    yield browser
    browser.close()


def test_sign_in_sets_a_strict_http_only_session(smart: Smart) -> None:
    browser, done = sign_in(smart, smart.user("admin"))
    with closing(browser):
        cookies = done.headers.get_list("set-cookie")
        path = "/console" if smart.root.endswith(str(smart.root.split("/")[2])) else smart.root.split("/", 3)[3]
        for name in (SESSION, REFRESH, CSRF):
            [line] = [c for c in cookies if c.startswith(f"{name}=")]
            assert "HttpOnly" in line and "SameSite=strict" in line.replace("Strict", "strict"), line
            assert f"Path={path.rstrip('/')}" in line or "Path=/t/" in line, line
        home = browser.get(f"{smart.root}/console")
        assert home.status_code == 200 and "Server health" in home.text
        assert home.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in \
            home.headers["content-security-policy"]
        assert re.search(r'id="ready">yes<', home.text), home.text  # /health/ready's checks, here: all pass
        # The console's own registration: a public client whose redirect is a path on this server.
        row = smart.store.client_row(CLIENT_ID)
        assert row is not None and row.public and list(row.redirect_uris) == ["/console/callback"]


def test_every_page_for_an_admin(smart: Smart, admin: httpx.Client) -> None:
    for suffix in PAGES:
        r = admin.get(f"{smart.root}/console{suffix}")
        assert r.status_code == 200, (suffix, r.text[:300])
        assert "<script" not in r.text and "http://" not in r.text.split("<main", 1)[0].replace(smart.root, "")


def test_a_session_is_its_hospitals_alone(smart: Smart, admin: httpx.Client) -> None:
    """A console session of one tenant is nothing at another's console (another issuer, other keys)."""
    host = smart.root.split("/t/")[0]
    elsewhere = f"{host}/console" if "/t/" in smart.root else f"{host}/t/nowhere/console"
    with httpx.Client(timeout=30) as thief:
        r = thief.get(elsewhere, headers={"Cookie": f"{SESSION}={admin.cookies.get(SESSION)}"})
        assert r.status_code in (401, 404), r.status_code  # /t/nowhere: no such hospital


def test_no_session_is_refused(smart: Smart) -> None:
    token = smart.system_token("system/*.cruds")  # a bearer token, even an all-powerful one, is no session
    with httpx.Client(timeout=30) as anonymous:
        for suffix in PAGES:
            r = anonymous.get(f"{smart.root}/console{suffix}")
            assert r.status_code == 401 and 'id="sign-in"' in r.text, suffix
            r = anonymous.get(f"{smart.root}/console{suffix}", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, suffix
        for action in ("/hl7/replay", "/outbox/1/retry", "/jobs/x/cancel", "/people/users", "/sign-out"):
            assert anonymous.post(f"{smart.root}/console{action}", data={"status": "error"}).status_code == 401


def test_other_roles_get_no_session(smart: Smart) -> None:
    for role in ("doctor", "receptionist", "patient"):
        browser, done = sign_in(smart, smart.user(role))
        with closing(browser):
            assert done.status_code == 403 and "your role is" in done.text, (role, done.text[:300])
            assert not [c for c in done.headers.get_list("set-cookie") if c.startswith(f"{SESSION}=") and
                        not c.startswith(f'{SESSION}=""')]
            assert browser.get(f"{smart.root}/console/hl7").status_code == 401


def test_an_interface_analyst_has_the_interfaces_and_nothing_more(smart: Smart, admin: httpx.Client) -> None:
    browser, done = sign_in(smart, smart.user("interface-analyst"))
    with closing(browser):
        assert done.status_code == 303
        for suffix in PAGES:
            r = browser.get(f"{smart.root}/console{suffix}")
            assert r.status_code == (403 if suffix in ADMIN_PAGES else 200), (suffix, r.status_code)
        assert "Users and clients" not in browser.get(f"{smart.root}/console").text  # not offered either
        csrf = csrf_of(browser.get(f"{smart.root}/console/outbox").text)
        created = browser.post(f"{smart.root}/console/people/users",
                               data={"csrf_token": csrf, "username": "sneaky", "role": "admin"})
        assert created.status_code == 403
        assert browser.get(f"{smart.root}/console/resources/Patient/1").status_code == 403
        sub = smart.as_admin("POST", "Subscription", json={
            "resourceType": "Subscription", "status": "requested", "reason": "ward board",
            "criteria": "Observation?code=potassium", "channel": {"type": "websocket"}}).json()
        shown = browser.get(f"{smart.root}/console/subscriptions/{sub['id']}")
        assert shown.status_code == 200 and "ward board" in shown.text
        # Its token reads Subscriptions and nothing else, even where the console is not in between.
        access = browser.cookies.get(SESSION)
        assert smart.fhir("GET", "Subscription", access).status_code == 200
        assert smart.fhir("GET", "Patient", access).status_code == 403


def test_csrf_token_required_on_every_post(smart: Smart, admin: httpx.Client) -> None:
    ids = seed_hl7(smart)
    url = f"{smart.root}/console/hl7/messages/{ids['error']}/replay"
    store = MessageStore(smart.backend.engine)
    before = store.get(ids["error"])
    assert before is not None
    for data in ({}, {"csrf_token": "forged"}):
        r = admin.post(url, data=data)
        assert r.status_code == 403 and "CSRF" in r.text
    after = store.get(ids["error"])
    assert after is not None and after.attempts == before.attempts  # nothing replayed
    with httpx.Client(timeout=30) as other:  # a CSRF token without the session cookie is worth nothing
        csrf = csrf_of(admin.get(f"{smart.root}/console/hl7").text)
        assert other.post(url, data={"csrf_token": csrf}).status_code == 401


def test_hl7_pages_masked_and_a_replay(smart: Smart, admin: httpx.Client) -> None:
    ids = seed_hl7(smart)
    listing = admin.get(f"{smart.root}/console/hl7", params={"status": "error"})
    assert listing.status_code == 200 and f"/hl7/messages/{ids['error']}" in listing.text
    assert f"/hl7/messages/{ids['ok']}" not in listing.text and BAD_BIRTH_DATE not in listing.text
    assert "GHH LAB|ELAB-3" in listing.text  # counts by sender
    by_patient = admin.get(f"{smart.root}/console/hl7", params={"patient": "555-44-4444"})
    assert f"/hl7/messages/{ids['ok']}" in by_patient.text, "PID-3 search"
    assert f"/hl7/messages/{ids['ok']}" not in admin.get(f"{smart.root}/console/hl7",
                                                         params={"patient": "555-44"}).text
    detail = admin.get(f"{smart.root}/console/hl7/messages/{ids['error']}")
    assert detail.status_code == 200
    assert BAD_BIRTH_DATE not in detail.text and "EVERYWOMAN" not in detail.text.upper()
    assert "PID|" in detail.text and "***" in detail.text and "MSA|AE" in detail.text  # masked text, its ACK
    ok = admin.get(f"{smart.root}/console/hl7/messages/{ids['ok']}")
    assert "/console/resources/Observation/" in ok.text  # what it produced, linked for an admin
    assert 'id="replay"' not in ok.text
    store = MessageStore(smart.backend.engine)
    attempts = store.get(ids["error"]).attempts  # type: ignore[union-attr]
    replay = admin.post(f"{smart.root}/console/hl7/messages/{ids['error']}/replay",
                        data={"csrf_token": csrf_of(detail.text)})
    assert replay.status_code == 303
    shown = admin.get(smart.root.split("/t/")[0] + replay.headers["location"]
                      if not replay.headers["location"].startswith("http") else replay.headers["location"])
    assert "replayed: now error" in shown.text
    assert store.get(ids["error"]).attempts == attempts + 1  # type: ignore[union-attr]
    again = admin.post(f"{smart.root}/console/hl7/messages/{ids['ok']}/replay", data={"csrf_token": csrf_of(ok.text)})
    assert again.status_code == 409  # a processed message is not applied twice
    # A filtered set: the rejected one of this sender.
    replayed = admin.post(f"{smart.root}/console/hl7/replay", data={
        "csrf_token": csrf_of(ok.text), "status": "rejected", "sender": "LIS|LAB"})
    assert replayed.status_code == 303
    assert store.get(ids["rejected"]).attempts >= 1  # type: ignore[union-attr]


def test_outbox_retry_and_discard(smart: Smart, admin: httpx.Client) -> None:
    row = dead_outbox_row(smart)
    page = admin.get(f"{smart.root}/console/outbox", params={"status": "dead"})
    assert "HTTP 503 from the lab system" in page.text and f'id="retry-{row}"' in page.text
    r = admin.post(f"{smart.root}/console/outbox/{row}/retry", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    pending = admin.get(f"{smart.root}/console/outbox", params={"status": "pending"}).text
    assert re.search(rf'id="row-{row}">.*?class="status">pending<', pending, re.S)
    other = dead_outbox_row(smart)
    admin.post(f"{smart.root}/console/outbox/{other}/discard", data={"csrf_token": csrf_of(page.text)})
    done = admin.get(f"{smart.root}/console/outbox", params={"status": "done"}).text
    assert f'id="row-{other}"' in done and "discarded by an operator" in done


def test_a_running_job_cancelled(smart: Smart, admin: httpx.Client) -> None:
    job = running_job(smart)
    page = admin.get(f"{smart.root}/console/jobs", params={"status": "running"})
    assert f'id="job-{job}"' in page.text and "7 resources exported" in page.text
    r = admin.post(f"{smart.root}/console/jobs/{job}/cancel", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    cancelled = admin.get(f"{smart.root}/console/jobs", params={"status": "cancelled"}).text
    assert re.search(rf'id="job-{job}">.*?class="status">cancelled<', cancelled, re.S)
    assert f'id="cancel-{job}"' not in cancelled  # nothing left to cancel
    again = admin.post(f"{smart.root}/console/jobs/{job}/cancel", data={"csrf_token": csrf_of(page.text)})
    assert "nothing to cancel" in admin.get(smart.root.split("/t/")[0] + again.headers["location"]
                                            if again.headers["location"].startswith("/") else
                                            again.headers["location"]).text


def test_users_and_clients(smart: Smart, admin: httpx.Client) -> None:
    page = admin.get(f"{smart.root}/console/people")
    csrf = csrf_of(page.text)
    made = admin.post(f"{smart.root}/console/people/users", data={
        "csrf_token": csrf, "username": "console-made", "role": "nurse", "fhir_user": ""})
    assert made.status_code == 200, made.text
    password = re.search(r'id="secret">([^<]+)<', made.text).group(1)  # type: ignore[union-attr]
    assert smart.store.login("console-made", password) is not None
    user_id = smart.store.login("console-made", password).id  # type: ignore[union-attr]
    reset = admin.post(f"{smart.root}/console/people/users/{user_id}/password", data={"csrf_token": csrf})
    new_password = re.search(r'id="secret">([^<]+)<', reset.text).group(1)  # type: ignore[union-attr]
    assert smart.store.login("console-made", password) is None and smart.store.login("console-made", new_password)
    off = admin.post(f"{smart.root}/console/people/users/{user_id}/deactivate", data={"csrf_token": csrf})
    assert off.status_code == 303 and smart.store.login("console-made", new_password) is None

    registered = admin.post(f"{smart.root}/console/people/clients", data={
        "csrf_token": csrf, "name": "Lab backend", "grant": "client_credentials", "scope": "system/Patient.rs",
        "redirect_uris": "", "public": "no"})
    secret = re.search(r'id="secret">([^<]+)<', registered.text).group(1)  # type: ignore[union-attr]
    client_id = re.search(r"client ([0-9a-f-]{36})", registered.text, re.I).group(1)  # type: ignore[union-attr]

    def token(sec: str) -> httpx.Response:
        return smart.http.post(smart.token_url, data={"grant_type": "client_credentials", "scope": "system/Patient.rs"},
                               auth=(client_id, sec))

    first = token(secret)
    assert first.status_code == 200
    rotated = admin.post(f"{smart.root}/console/people/clients/{client_id}/rotate", data={"csrf_token": csrf})
    new_secret = re.search(r'id="secret">([^<]+)<', rotated.text).group(1)  # type: ignore[union-attr]
    assert token(secret).status_code == 401 and token(new_secret).status_code == 200
    issued = first.json()["access_token"]
    assert smart.fhir("GET", "Patient?_count=1", issued).status_code == 200
    revoked = admin.post(f"{smart.root}/console/people/clients/{client_id}/revoke", data={"csrf_token": csrf})
    assert revoked.status_code == 303
    assert token(new_secret).status_code == 401
    assert smart.fhir("GET", "Patient?_count=1", issued).status_code == 401  # its tokens end at once
    listing = admin.get(f"{smart.root}/console/people").text
    assert "console-made" in listing and "deactivated" in listing and "revoked" in listing
    assert secret not in listing and new_secret not in listing and new_password not in listing


def test_resource_browser_reads_follows_and_shows_history(smart: Smart, admin: httpx.Client) -> None:
    patient = smart.as_admin("POST", "Patient", json={"resourceType": "Patient", "name": [{"family": "Browsed"}]})
    pid = patient.json()["id"]
    obs = smart.as_admin("POST", "Observation", json={"resourceType": "Observation", "status": "final",
                                                      "code": {"text": "<b>glucose</b>"},
                                                      "subject": {"reference": f"Patient/{pid}"}}).json()
    smart.as_admin("PUT", f"Observation/{obs['id']}", json={**obs, "status": "amended"})
    found = admin.get(f"{smart.root}/console/resources", params={"type": "Observation", "criteria": f"subject={pid}"})
    assert f"/console/resources/Observation/{obs['id']}" in found.text and "&lt;b&gt;glucose" in found.text
    shown = admin.get(f"{smart.root}/console/resources/Observation/{obs['id']}")
    assert shown.status_code == 200 and f'/console/resources/Patient/{pid}"' in shown.text  # the reference, linked
    assert "<b>glucose" not in shown.text and "Version 2" in shown.text and "Version 1" in shown.text
    bad = admin.get(f"{smart.root}/console/resources", params={"type": "Observation", "criteria": "nonsense=1"})
    assert bad.status_code == 200 and 'role="alert"' in bad.text


def test_sign_out_ends_the_sign_in(smart: Smart) -> None:
    browser, _ = sign_in(smart, smart.user("admin"))
    with closing(browser):
        page = browser.get(f"{smart.root}/console/jobs")
        access = browser.cookies.get(SESSION)
        out = browser.post(f"{smart.root}/console/sign-out", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 200 and 'id="sign-in"' in out.text
        assert smart.fhir("GET", "Subscription", access).status_code == 401  # the token itself is revoked


def test_wrong_state_or_password_gives_no_session(smart: Smart) -> None:
    with httpx.Client(timeout=30) as browser:
        r = browser.get(f"{smart.root}/console/callback", params={"code": "x", "state": "y"})
        assert r.status_code == 400 and SESSION not in browser.cookies
    with pytest.raises(AssertionError):
        sign_in(smart, smart.user("admin"), password=PASSWORD + "x")
