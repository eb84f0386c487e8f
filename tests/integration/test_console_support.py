"""Shared pieces of the console tests (no tests here): signing in to /console through the server's own
SMART sign-in, as a browser would, with httpx; seeding HL7 messages and outbox rows."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from html import unescape
from urllib.parse import urlencode

import httpx
from sqlalchemy import insert

from fhir_server.storage.models import OUTBOX
from interfaces.mllp.pipeline import Hl7Pipeline
from interfaces.mllp.store import MessageStore
from tests.integration.test_auth_support import PASSWORD, Smart, hidden_fields
from tests.integration.test_mllp import golden

BAD_BIRTH_DATE = "196203520"  # PID-7 of errors/python_hl7_bad_birth_date.hl7


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:500]
    return unescape(found.group(1))


def sign_in(smart: Smart, username: str, password: str = PASSWORD) -> tuple[httpx.Client, httpx.Response]:
    """A browser of its own (cookie jar) signed in to the console: (the client, the last answer)."""
    browser = httpx.Client(timeout=60)
    start = browser.get(f"{smart.root}/console/sign-in")
    assert start.status_code == 303, start.text
    authorize = smart.root.split("/t/")[0] + start.headers["location"] if start.headers["location"].startswith("/") \
        else start.headers["location"]
    form_page = browser.get(authorize)
    assert form_page.status_code == 200, form_page.text
    data = [*hidden_fields(form_page.text), ("username", username), ("password", password), ("decision", "allow")]
    posted = browser.post(authorize.split("?")[0], content=urlencode(data),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert posted.status_code == 302, posted.text
    assert posted.headers["location"].startswith(f"{smart.root}/console/callback?"), posted.headers["location"]
    done = browser.get(posted.headers["location"])
    return browser, done


def seed_hl7(smart: Smart) -> dict[str, int]:
    """A processed lab result, one that failed (a bad birth date) and a rejected one: their row ids."""
    pipeline = Hl7Pipeline(smart.auth.fhir, MessageStore(smart.backend.engine))
    tag = uuid.uuid4().hex[:6]
    pipeline.handle(golden("ORU_R01/python_hl7_glucose_sn.hl7").replace(b"|CNTRL-3456|", f"|OK-{tag}|".encode()))
    pipeline.handle(golden("errors/python_hl7_bad_birth_date.hl7").replace(b"|CNTRL-3456|", f"|ERR-{tag}|".encode()))
    pipeline.handle(f"MSH|^~\\&|LIS|LAB|FHIR|HOSP|20240101||ZZZ^Z99|REJ-{tag}|P|2.5.1\rPID|1||X\r".encode())
    store = MessageStore(smart.backend.engine)
    out = {}
    for name, sender, control in (("ok", "GHH LAB|ELAB-3", f"OK-{tag}"), ("error", "GHH LAB|ELAB-3", f"ERR-{tag}"),
                                  ("rejected", "LIS|LAB", f"REJ-{tag}")):
        row = store.find(sender, control)
        assert row is not None, (name, sender, control)
        out[name] = row.pk
    return out


def dead_outbox_row(smart: Smart, error: str = "HTTP 503 from the lab system") -> int:
    """A dead letter, as the dispatcher leaves one that failed every attempt (no dispatcher runs in tests)."""
    now = datetime.now(UTC)
    with smart.backend.engine.begin() as conn:
        return int(conn.execute(insert(OUTBOX).values(
            topic="console-test", key=f"console/{uuid.uuid4().hex}", payload={}, status="dead", attempts=5,
            max_attempts=5, next_attempt_at=now, created_at=now, last_error=error).returning(OUTBOX.c.pk)).scalar_one())


def running_job(smart: Smart) -> str:
    """A bulk export some runner holds (its lease far ahead, so no runner here takes it over)."""
    from fhir_server.jobs.tables import BULK_JOB

    job_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    with smart.backend.engine.begin() as conn:
        conn.execute(insert(BULK_JOB).values(
            id=job_id, kind="export", status="running", request=f"{smart.base}/$export", params={}, access=None,
            owner="someone else", transaction_time=now, created_at=now, updated_at=now, lease_token="held",
            lease_until=now.replace(year=now.year + 1), progress={"exported": 7, "types": ["Patient"], "cursor": {}}))
    return job_id
