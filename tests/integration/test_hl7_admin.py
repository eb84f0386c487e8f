"""GET /admin/hl7/messages over real HTTP: admin token required when auth is on, errors masked, raw text
only when an admin asks for it; and the open embedded default (auth off)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest

from interfaces.mllp.admin import mask
from interfaces.mllp.pipeline import Hl7Pipeline
from interfaces.mllp.store import MessageStore
from tests.conftest import Backend, LiveServer
from tests.integration.test_auth_support import (
    Smart,
    authorize,
    code_from,
    exchange,
    pkce,
    smart_of,
    smart_server,
)
from tests.integration.test_mllp import golden

REDIRECT = "http://127.0.0.1:9/callback"
BAD_BIRTH_DATE = "196203520"  # PID-7 of errors/python_hl7_bad_birth_date.hl7: quoted in the stored error


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend)


def user_token(smart: Smart, role: str) -> str:
    user = smart.user(role)
    app = smart.client(["authorization_code"], "user/*.rs", redirect_uris=[REDIRECT], public=True)
    verifier, challenge = pkce()
    code = code_from(authorize(smart, app["client_id"], REDIRECT, "user/*.rs", user, challenge=challenge), REDIRECT)
    return str(exchange(smart, app["client_id"], code, REDIRECT, verifier).json()["access_token"])


def fill(pipeline: Hl7Pipeline) -> None:
    pipeline.handle(golden("ORU_R01/python_hl7_glucose_sn.hl7"))
    # The same sender and control id as the one above in the golden files: given one of its own here.
    pipeline.handle(golden("errors/python_hl7_bad_birth_date.hl7").replace(b"|CNTRL-3456|", b"|CNTRL-ERR1|"))
    pipeline.handle(golden("ORU_R01/report_with_pdf.hl7"))
    pipeline.handle(b"MSH|^~\\&|LIS|LAB|FHIR|HOSP|20240101||ZZZ^Z99|REJ-1|P|2.5.1\rPID|1||X\r")


def test_admin_token_required_and_pii_masked(smart: Smart) -> None:
    smart.backend.truncate()
    fill(Hl7Pipeline(smart.auth.fhir, MessageStore(smart.backend.engine)))
    url = f"{smart.root}/admin/hl7/messages"
    assert smart.http.get(url).status_code == 401
    doctor = {"Authorization": f"Bearer {user_token(smart, 'doctor')}"}
    refused = smart.http.get(url, headers=doctor, params={"reveal": "true"})
    assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"
    assert "MSH|" not in refused.text and BAD_BIRTH_DATE not in refused.text
    system = {"Authorization": f"Bearer {smart.system_token('system/*.cruds')}"}  # a client, not an admin user
    assert smart.http.get(url, headers=system).status_code == 403

    admin = {"Authorization": f"Bearer {user_token(smart, 'admin')}"}
    body = smart.http.get(url, headers=admin).json()
    assert body["counts"] == {"received": 0, "processed": 2, "error": 1, "rejected": 1}
    assert [m["status"] for m in body["messages"]] == ["rejected", "processed", "error", "processed"]  # newest first
    assert body["masked"] is True and "before" not in body
    for message in body["messages"]:
        assert "raw" not in message and "acks" not in message
    error = next(m for m in body["messages"] if m["status"] == "error")
    assert error["controlId"] == "CNTRL-ERR1" and error["type"] == "ORU^R01" and error["attempts"] == 1
    assert error["error"] == "PID[1]-7: '***' is not a valid date"
    processed = body["messages"][-1]
    assert processed["sender"] == "GHH LAB|ELAB-3" and any(r.startswith("Observation/") for r in processed["resources"])
    assert BAD_BIRTH_DATE not in str(body) and "EVERYWOMAN" not in str(body)

    errors = smart.http.get(url, headers=admin, params={"status": "error", "reveal": "true"}).json()
    [shown] = errors["messages"]
    assert errors["masked"] is False and BAD_BIRTH_DATE in shown["error"]
    assert shown["raw"].startswith("MSH|^~\\&|GHH LAB|") and "EVERYWOMAN" in shown["raw"]
    assert shown["acks"][0].split("\r")[1].startswith("MSA|AE|CNTRL-ERR1")

    first = smart.http.get(url, headers=admin, params={"limit": 2}).json()
    assert len(first["messages"]) == 2
    rest = smart.http.get(url, headers=admin, params={"limit": 2, "before": first["before"]}).json()
    assert [m["id"] for m in first["messages"] + rest["messages"]] == [m["id"] for m in body["messages"]]
    assert "before" not in rest

    bad = smart.http.get(url, headers=admin, params={"status": "lost"})
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["status"]
    assert smart.http.get(url, headers=admin, params={"limit": 0}).status_code == 400


def test_reveal_leaves_an_audit_event_naming_the_admin_and_the_patients(backend: Backend) -> None:
    for audited in smart_server(backend, audit_enabled=True):
        audited.backend.truncate()
        fill(Hl7Pipeline(audited.auth.fhir, MessageStore(audited.backend.engine)))
        url = f"{audited.root}/admin/hl7/messages"
        admin = {"Authorization": f"Bearer {user_token(audited, 'admin')}"}
        assert audited.http.get(url, headers=admin).status_code == 200  # masked: not audited as a reveal
        shown = audited.http.get(url, headers=admin, params={"status": "processed", "reveal": "true"}).json()
        patients = {r for m in shown["messages"] for r in m["resources"] if r.startswith("Patient/")}
        assert len(patients) == 2
        audited.auth.fhir.audit.recorder.flush()  # type: ignore[union-attr]
        token = audited.system_token("system/AuditEvent.rs")
        found = audited.fhir("GET", "AuditEvent", token, params={"_count": "200"}).json().get("entry", [])
        reveals = [e["resource"] for e in found if e["resource"]["subtype"][0]["code"] == "hl7-messages-reveal"]
        [event] = reveals
        assert event["action"] == "R" and event["outcome"] == "0"
        [user] = [a for a in event["agent"] if a["type"]["coding"][0]["code"] == "humanuser"]
        assert user["requestor"] is True
        assert "127.0.0.1" in [a.get("network", {}).get("address") for a in event["agent"]]
        entities = event["entity"]
        assert {e["what"]["reference"] for e in entities if e["role"]["code"] == "1"} == patients
        [query] = [e["query"] for e in entities if e["role"]["code"] == "24"]
        assert base64.b64decode(query).decode() == "status=processed&reveal=true"


def test_open_embedded_default_still_needs_an_admin_token(api: LiveServer) -> None:
    fill(Hl7Pipeline(api.fhir, MessageStore(api.backend.engine)))
    local = smart_of(api)
    url = f"{local.root}/admin/hl7/messages"
    assert httpx.get(url, params={"status": "processed"}).status_code == 401  # auth off, yet no open door
    doctor = {"Authorization": f"Bearer {user_token(local, 'doctor')}"}
    assert httpx.get(url, headers=doctor).status_code == 403
    admin = {"Authorization": f"Bearer {user_token(local, 'admin')}"}
    body = httpx.get(url, headers=admin, params={"status": "processed"}).json()
    assert [m["status"] for m in body["messages"]] == ["processed", "processed"]
    assert body["counts"]["error"] == 1


def test_mask_hides_every_quoted_value() -> None:
    assert mask("PID[1]-5: 'Müller^Jürgen' and \"x\" bad") == "PID[1]-5: '***' and \"***\" bad"
    assert mask(None) is None and mask("no values") == "no values"
