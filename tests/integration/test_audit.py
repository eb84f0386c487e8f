"""AuditEvent for every access, through the real HTTP server with SMART tokens, on both databases: reads,
searches (query base64 in entity.query), history, writes in their own transaction (a rolled-back
transaction leaves a failure event, no success), Bundles and their entries, and refused requests."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest
from sqlalchemy import func, select

from fhir_server.storage.models import RESOURCE
from tests.conftest import Backend
from tests.integration.test_auth_support import Smart, authorize, code_from, exchange, pkce, smart_server

REDIRECT = "http://127.0.0.1:9/callback"
JSON = {"Content-Type": "application/fhir+json"}
INTERACTION = "http://hl7.org/fhir/restful-interaction"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend, audit_enabled=True)


def user_token(smart: Smart, role: str, scope: str, *, fhir_user: str | None = None,
               patient: str | None = None) -> str:
    user = smart.user(role, fhir_user)
    client = smart.client(["authorization_code"], scope, redirect_uris=[REDIRECT], public=True)
    verifier, challenge = pkce()
    form = {"patient": patient} if patient else None
    code = code_from(authorize(smart, client["client_id"], REDIRECT, scope, user, challenge=challenge, form=form),
                     REDIRECT)
    r = exchange(smart, client["client_id"], code, REDIRECT, verifier)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def audits(smart: Smart, **params: str) -> list[dict[str, Any]]:
    """AuditEvents matching a search, read with a token for audit readers, after the queue is written."""
    smart.auth.fhir.audit.recorder.flush()  # type: ignore[union-attr]
    token = smart.system_token("system/AuditEvent.rs")
    r = smart.fhir("GET", "AuditEvent", token, params={"_count": "200", **params})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e.get("search", {}).get("mode") == "match"]


def stored_audit_count(smart: Smart) -> int:
    smart.auth.fhir.audit.recorder.flush()  # type: ignore[union-attr]
    with smart.backend.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(RESOURCE)
                                .where(RESOURCE.c.resource_type == "AuditEvent")).scalar_one())


def subtype(event: dict[str, Any]) -> str:
    return str(event["subtype"][0]["code"])


def entities(event: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [e for e in event.get("entity", []) if e["role"]["code"] == role]


def create(smart: Smart, resource: dict[str, Any]) -> str:
    r = smart.as_admin("POST", resource["resourceType"], content=orjson.dumps(resource), headers=JSON)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def patient(smart: Smart) -> dict[str, str]:
    pid = create(smart, {"resourceType": "Patient", "name": [{"family": "Audit"}]})
    obs = create(smart, {"resourceType": "Observation", "status": "final", "code": {"text": "glucose"},
                         "subject": {"reference": f"Patient/{pid}"}})
    return {"patient": pid, "observation": obs}


def test_reads_searches_and_history_name_who_what_and_from_where(smart: Smart, patient: dict[str, str]) -> None:
    pid, obs = patient["patient"], patient["observation"]
    doctor = user_token(smart, "doctor", "user/*.rs", fhir_user="Practitioner/dr-audit")
    assert smart.fhir("GET", f"Observation/{obs}", doctor).status_code == 200
    assert smart.fhir("GET", f"Observation/{obs}/_history/1", doctor).status_code == 200
    assert smart.fhir("GET", f"Observation/{obs}/_history", doctor).status_code == 200
    assert smart.fhir("GET", "Observation", doctor, params={"subject": f"Patient/{pid}"}).status_code == 200

    mine = audits(smart, agent="Practitioner/dr-audit")
    by_code = {subtype(e): e for e in mine}
    assert {"read", "vread", "history-instance", "search-type"} <= set(by_code)
    read = by_code["read"]
    assert read["type"]["code"] == "110110" and read["subtype"][0]["system"] == INTERACTION
    assert read["action"] == "R" and read["outcome"] == "0"
    user, app = read["agent"]
    assert user["who"] == {"reference": "Practitioner/dr-audit"} and user["requestor"] is True
    assert user["role"][0]["coding"][0]["code"] == "doctor"
    assert app["network"]["address"] == "127.0.0.1" and app["altId"] and app["requestor"] is False
    assert [e["what"]["reference"] for e in entities(read, "4")] == [f"Observation/{obs}"]
    assert [e["what"]["reference"] for e in entities(read, "1")] == [f"Patient/{pid}"]  # the patient concerned
    search = by_code["search-type"]
    (query,) = entities(search, "24")
    text = base64.b64decode(query["query"]).decode()
    assert text.startswith("Observation?") and ("subject", f"Patient/{pid}") in parse_qsl(text.split("?")[1])
    assert [e["what"]["reference"] for e in entities(search, "1")] == [f"Patient/{pid}"]
    # Searchable as ordinary resources: by patient, by date, by action.
    about = audits(smart, patient=pid, action="R")
    assert {subtype(e) for e in about} >= {"read", "vread", "search-type"}
    assert all(e["action"] == "R" for e in about)
    assert audits(smart, agent="Practitioner/dr-audit", date="ge2000-01-01")
    assert not audits(smart, agent="Practitioner/dr-audit", date="lt2000-01-01")


def test_writes_are_audited_in_their_transaction(smart: Smart) -> None:
    token = smart.system_token("system/*.cruds")
    body = {"resourceType": "Patient", "name": [{"family": "Written"}]}
    r = smart.fhir("POST", "Patient", token, content=orjson.dumps(body), headers=JSON)
    pid = r.json()["id"]
    # A write's AuditEvent commits with the write: visible at once, without waiting for the queue.
    with smart.backend.engine.connect() as conn:
        rows = conn.execute(select(RESOURCE.c.content).where(RESOURCE.c.resource_type == "AuditEvent")).all()
    created = [c for (c,) in rows if c.get("action") == "C"
               and any(e.get("what", {}).get("reference") == f"Patient/{pid}" for e in c.get("entity", []))]
    assert len(created) == 1 and created[0]["outcome"] == "0"
    (app,) = created[0]["agent"]  # a backend service: the client itself is the requestor
    assert app["requestor"] is True and app["type"]["coding"][0]["code"] == "110150"
    r = smart.fhir("PUT", f"Patient/{pid}", token, content=orjson.dumps({**body, "id": pid, "active": True}),
                   headers=JSON)
    assert r.status_code == 200
    assert smart.fhir("DELETE", f"Patient/{pid}", token).status_code == 204
    actions = sorted((subtype(e), e["action"]) for e in audits(smart, patient=pid) if e["action"] != "R")
    assert actions == [("create", "C"), ("delete", "D"), ("update", "U")]


def test_a_transaction_records_one_audit_event_per_kind_of_write_naming_every_resource(smart: Smart) -> None:
    token = smart.system_token("system/*.cruds")
    existing = create(smart, {"resourceType": "Patient", "name": [{"family": "Grouped"}]})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        *({"fullUrl": f"urn:uuid:obs-{i}", "resource": {
            "resourceType": "Observation", "status": "final", "code": {"text": f"grouped {i}"},
            "subject": {"reference": f"Patient/{existing}"}}, "request": {"method": "POST", "url": "Observation"}}
          for i in range(5)),
        {"resource": {"resourceType": "Patient", "id": existing, "active": True},
         "request": {"method": "PUT", "url": f"Patient/{existing}"}}]}
    r = smart.fhir("POST", "", token, content=orjson.dumps(bundle), headers=JSON)
    assert r.status_code == 200, r.text
    observations = {e["response"]["location"].split("/_history")[0] for e in r.json()["entry"][:5]}
    writes = [e for e in audits(smart, patient=existing) if e["action"] in ("C", "U")]
    created = [e for e in writes if subtype(e) == "create"  # not the Patient's own create before the Bundle
               and any(x["what"]["reference"].startswith("Observation/") for x in entities(e, "4"))]
    assert len(created) == 1  # one AuditEvent for the five creates, not five
    named = {x["what"]["reference"] for x in entities(created[0], "4")}
    assert named == observations
    assert [x["what"]["reference"] for x in entities(created[0], "1")] == [f"Patient/{existing}"]
    (updated,) = [e for e in writes if subtype(e) == "update"]
    assert entities(updated, "1")[0]["what"]["reference"] == f"Patient/{existing}"


def test_a_rolled_back_transaction_leaves_a_failure_event_and_no_success(smart: Smart) -> None:
    token = smart.system_token("system/*.cruds")
    before = stored_audit_count(smart)
    created = len(audits(smart, subtype=f"{INTERACTION}|create"))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "name": [{"family": "Never"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "code": {"text": "no status"}},  # invalid: rolls back
         "request": {"method": "PUT", "url": "Observation/rollback-1"}}]}
    r = smart.fhir("POST", "", token, content=orjson.dumps(bundle), headers=JSON)
    assert r.status_code == 400
    assert len(audits(smart, subtype=f"{INTERACTION}|create")) == created  # the Patient's success: rolled back
    failed = audits(smart, subtype=f"{INTERACTION}|transaction", outcome="4")
    assert failed and failed[-1]["action"] == "E"
    update = [e for e in audits(smart, entity="Observation/rollback-1") if subtype(e) == "update"]
    assert len(update) == 1 and update[0]["outcome"] == "4"  # the failing entry
    assert stored_audit_count(smart) > before
    assert smart.as_admin("GET", "Observation/rollback-1").status_code == 404


def test_batch_entries_are_audited_one_by_one(smart: Smart, patient: dict[str, str]) -> None:
    token = user_token(smart, "doctor", "user/*.cruds", fhir_user="Practitioner/dr-batch")
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation/{patient['observation']}"}},
        {"request": {"method": "GET", "url": "Observation/no-such-one"}},
        {"resource": {"resourceType": "Patient", "name": [{"family": "Batched"}]},
         "request": {"method": "POST", "url": "Patient"}}]}
    r = smart.fhir("POST", "", token, content=orjson.dumps(bundle), headers=JSON)
    assert r.status_code == 200
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses[0].startswith("200") and statuses[1].startswith("404") and statuses[2].startswith("201")
    events = audits(smart, agent="Practitioner/dr-batch")
    rest = sorted((subtype(e), e["outcome"]) for e in events if e["type"]["code"] == "110110")
    assert rest == [("batch", "0"), ("create", "0"), ("read", "0"), ("read", "4")]
    sign_in = sorted((subtype(e), e["outcome"]) for e in events if e["type"]["code"] == "110114")
    assert sign_in == [("110122", "0"), ("token-issue", "0")]  # the doctor's sign-in and token


def test_refused_requests_are_audited(smart: Smart, patient: dict[str, str]) -> None:
    obs = patient["observation"]
    assert smart.fhir("GET", f"Observation/{obs}").status_code == 401  # no token
    assert smart.fhir("GET", f"Observation/{obs}", "not-a-token").status_code == 401
    other = create(smart, {"resourceType": "Patient"})
    token = user_token(smart, "doctor", "launch/patient patient/*.rs", fhir_user="Practitioner/dr-denied",
                       patient=other)
    assert smart.fhir("GET", f"Observation/{obs}", token).status_code == 403  # another patient's
    events = [e for e in audits(smart, entity=f"Observation/{obs}") if e["outcome"] == "4"]
    unauthenticated = [e for e in events if e["agent"][0]["who"] == {"display": "unauthenticated"}]
    assert len(unauthenticated) == 2 and all(e["outcomeDesc"] == "HTTP 401" for e in unauthenticated)
    assert unauthenticated[0]["agent"][0]["network"]["address"] == "127.0.0.1"
    (forbidden,) = [e for e in events if e["agent"][0]["who"] == {"reference": "Practitioner/dr-denied"}]
    assert forbidden["outcomeDesc"] == "HTTP 403" and subtype(forbidden) == "read"


def test_reading_audit_events_is_audited_once_without_a_loop(smart: Smart) -> None:
    token = smart.system_token("system/AuditEvent.rs")
    before = stored_audit_count(smart)
    assert smart.fhir("GET", "AuditEvent", token, params={"_count": "50"}).status_code == 200
    after = stored_audit_count(smart)
    assert after == before + 1
    assert stored_audit_count(smart) == after  # nothing more trickles in


def test_operations_are_audited(smart: Smart) -> None:
    token = user_token(smart, "doctor", "user/*.rs", fhir_user="Practitioner/dr-ops")
    r = smart.fhir("GET", "ValueSet/$expand", token, params={"url": "http://example.org/no-such-value-set"})
    assert r.status_code >= 400
    (event,) = [e for e in audits(smart, agent="Practitioner/dr-ops") if subtype(e) == "operation"]
    assert event["action"] == "E" and event["outcome"] == "4"
