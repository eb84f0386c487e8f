"""The console's actions in the audit trail (audit on, as in test_audit.py): who did what to what, never a
generated password or secret."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import closing

import orjson
import pytest

from tests.conftest import Backend
from tests.integration.test_audit import audits, subtype
from tests.integration.test_auth_support import Smart, smart_server
from tests.integration.test_console_support import csrf_of, dead_outbox_row, seed_hl7, sign_in


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend, audit_enabled=True)


def test_console_actions_are_audited(smart: Smart) -> None:
    username = smart.user("admin")
    ids = seed_hl7(smart)
    row = dead_outbox_row(smart)
    browser, done = sign_in(smart, username)
    with closing(browser):
        assert done.status_code == 303
        page = browser.get(f"{smart.root}/console/hl7/messages/{ids['error']}")
        csrf = csrf_of(page.text)
        browser.post(f"{smart.root}/console/hl7/messages/{ids['error']}/replay", data={"csrf_token": csrf})
        browser.post(f"{smart.root}/console/outbox/{row}/retry", data={"csrf_token": csrf})
        made = browser.post(f"{smart.root}/console/people/users", data={
            "csrf_token": csrf, "username": "audited-nurse", "role": "nurse"})
        password = re.search(r'id="secret">([^<]+)<', made.text).group(1)  # type: ignore[union-attr]
        browser.post(f"{smart.root}/console/sign-out", data={"csrf_token": csrf})
    events = audits(smart, _sort="-date")
    by_code = {subtype(e): e for e in reversed(events)}  # the newest of each
    for code in ("110122", "token-issue", "console-hl7-message", "console-hl7-replay", "console-outbox-retry",
                 "user-create", "console-sign-out"):
        assert code in by_code, (code, sorted(by_code))
    replay = by_code["console-hl7-replay"]
    assert replay["outcome"] == "0" and any(a.get("name") == username or a.get("altId") for a in replay["agent"])
    roles = [c["code"] for a in replay["agent"] for r in a.get("role", []) for c in r.get("coding", [])]
    assert "admin" in roles
    assert any(e.get("what", {}).get("reference") == f"hl7-message/{ids['error']}" for e in replay["entity"]) or \
        f"hl7-message/{ids['error']}" in orjson.dumps(replay).decode()
    assert f"outbox/{row}" in orjson.dumps(by_code["console-outbox-retry"]).decode()
    assert password not in orjson.dumps(events).decode()  # a generated password is shown once, never recorded
