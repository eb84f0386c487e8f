"""The audit trail's own protection, and the security gaps closed with it, through real HTTP on both databases:
AuditEvents are append-only for everyone (also inside Bundles) and read only by admins and audit readers;
sign-in failures, denied reads and token issues leave AuditEvents naming the right agent; no password,
token or secret reaches the logs; a deleted resource says 410 only to callers who could read it; rate limits
are shared by server processes; introspection by a registered resource server (``--resource-server``)."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Backend
from tests.integration.test_audit import JSON, REDIRECT, audits, create, subtype, user_token
from tests.integration.test_auth_support import PASSWORD, Smart, authorize, code_from, exchange, pkce, smart_server

DCM = "http://dicom.nema.org/resources/ontology/DCM"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend, audit_enabled=True)


@pytest.fixture(scope="module")
def an_audit_event(smart: Smart) -> str:
    create(smart, {"resourceType": "Patient"})  # leaves an AuditEvent (create)
    return str(audits(smart)[0]["id"])


def _issues(r: Any) -> str:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return " ".join(i.get("diagnostics", "") for i in body["issue"])


def test_audit_events_are_append_only_for_everyone(smart: Smart, an_audit_event: str) -> None:
    aid = an_audit_event
    admin = user_token(smart, "admin", "user/*.cruds")
    callers = [admin, smart.system_token("system/*.cruds"), smart.system_token("system/AuditEvent.cruds")]
    existing = smart.fhir("GET", f"AuditEvent/{aid}", callers[2]).json()
    for token in callers:
        put = smart.fhir("PUT", f"AuditEvent/{aid}", token, content=orjson.dumps({**existing, "outcome": "0"}),
                         headers=JSON)
        patch = smart.fhir("PATCH", f"AuditEvent/{aid}", token, content=b'[{"op":"remove","path":"/agent"}]',
                           headers={"Content-Type": "application/json-patch+json"})
        delete = smart.fhir("DELETE", f"AuditEvent/{aid}", token)
        conditional = smart.fhir("DELETE", "AuditEvent", token, params={"_id": aid})
        for r in (put, patch, delete, conditional):
            assert r.status_code == 405, r.text
            assert "append-only" in _issues(r)
    assert smart.fhir("GET", f"AuditEvent/{aid}", callers[2]).json()["meta"]["versionId"] == "1"
    # Inside Bundles too: a transaction fails whole, a batch entry fails alone.
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**existing, "outcome": "0"}, "request": {"method": "PUT", "url": f"AuditEvent/{aid}"}}]}
    r = smart.fhir("POST", "", callers[1], content=orjson.dumps(transaction), headers=JSON)
    assert r.status_code == 405
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "DELETE", "url": f"AuditEvent/{aid}"}}]}
    r = smart.fhir("POST", "", admin, content=orjson.dumps(batch), headers=JSON)
    assert r.status_code == 200 and r.json()["entry"][0]["response"]["status"] == "405"
    assert smart.fhir("GET", f"AuditEvent/{aid}", callers[2]).json()["meta"]["versionId"] == "1"


def test_only_a_named_system_scope_may_submit_audit_events(smart: Smart) -> None:
    forged = {"resourceType": "AuditEvent", "type": {"system": DCM, "code": "110110"}, "recorded":
              "2026-01-01T00:00:00Z", "agent": [{"requestor": True, "who": {"display": "someone else"}}],
              "source": {"observer": {"display": "an EHR"}}}
    admin = user_token(smart, "admin", "user/*.cruds")
    for token in (admin, smart.system_token("system/*.cruds")):
        r = smart.fhir("POST", "AuditEvent", token, content=orjson.dumps(forged), headers=JSON)
        assert r.status_code == 403 and "system/AuditEvent.c" in _issues(r)
        transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": forged, "request": {"method": "POST", "url": "AuditEvent"}}]}
        assert smart.fhir("POST", "", token, content=orjson.dumps(transaction), headers=JSON).status_code == 403
    # An audit source (IHE ATNA/BALP "Record Audit Event") granted system/AuditEvent.c by name.
    source = smart.system_token("system/AuditEvent.c")
    r = smart.fhir("POST", "AuditEvent", source, content=orjson.dumps(forged), headers=JSON)
    assert r.status_code == 201, r.text
    submitted = [e for e in audits(smart, entity=f"AuditEvent/{r.json()['id']}") if subtype(e) == "create"]
    assert len(submitted) == 1  # who submitted it is on record


def test_only_admins_and_audit_readers_read_audit_events(smart: Smart, an_audit_event: str) -> None:
    aid = an_audit_event
    admin = user_token(smart, "admin", "user/*.rs")
    assert smart.fhir("GET", f"AuditEvent/{aid}", admin).status_code == 200
    assert smart.fhir("GET", "AuditEvent", admin).json().get("entry")
    assert smart.fhir("GET", f"AuditEvent/{aid}", smart.system_token("system/AuditEvent.rs")).status_code == 200
    for token in (user_token(smart, "doctor", "user/*.cruds"), user_token(smart, "nurse", "user/*.rs"),
                  smart.system_token("system/Patient.rs")):
        assert smart.fhir("GET", f"AuditEvent/{aid}", token).status_code == 403
        found = smart.fhir("GET", "AuditEvent", token)
        assert found.status_code in (200, 403)
        assert not [e for e in found.json().get("entry", []) if e["resource"]["resourceType"] == "AuditEvent"]


def test_sign_in_failure_denied_read_and_token_issue_leave_audit_events(smart: Smart) -> None:
    user = smart.user("nurse", "Practitioner/nurse-audited")
    client = smart.client(["authorization_code"], "launch/patient patient/*.rs", redirect_uris=[REDIRECT],
                          public=True)
    verifier, challenge = pkce()
    wrong = authorize(smart, client["client_id"], REDIRECT, "patient/*.rs", user, password="Wrong-Password-9!",
                      challenge=challenge)
    assert wrong.status_code == 401
    failed = [e for e in audits(smart, altid=client["client_id"]) if subtype(e) == "110122"]
    assert len(failed) == 1 and failed[0]["outcome"] == "4" and failed[0]["type"]["code"] == "110114"
    assert failed[0]["agent"][0]["name"] == user and "who" in failed[0]["agent"][0]
    assert failed[0]["agent"][1]["altId"] == client["client_id"]

    mine, other = create(smart, {"resourceType": "Patient"}), create(smart, {"resourceType": "Patient"})
    code = code_from(authorize(smart, client["client_id"], REDIRECT, "launch/patient patient/*.rs", user,
                               challenge=challenge, form={"patient": mine}), REDIRECT)
    token = exchange(smart, client["client_id"], code, REDIRECT, verifier).json()["access_token"]
    issued = [e for e in audits(smart, agent="Practitioner/nurse-audited") if subtype(e) == "token-issue"]
    assert len(issued) == 1 and issued[0]["outcome"] == "0" and issued[0]["action"] == "E"
    assert issued[0]["agent"][1]["altId"] == client["client_id"]
    assert smart.fhir("GET", f"Patient/{other}", token).status_code == 403
    denied = [e for e in audits(smart, patient=other, outcome="4") if subtype(e) == "read"]
    assert len(denied) == 1 and denied[0]["agent"][0]["who"] == {"reference": "Practitioner/nurse-audited"}
    bad = smart.http.post(smart.token_url, data={"grant_type": "client_credentials"}, auth=("nobody", "nothing"))
    assert bad.status_code == 401
    refused = [e for e in audits(smart, altid="nobody") if subtype(e) == "token-issue"]
    assert len(refused) == 1 and refused[0]["outcome"] == "4"


def test_no_password_token_or_secret_in_the_logs(smart: Smart, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    user = smart.user("doctor")
    client = smart.client(["authorization_code"], "user/*.rs offline_access", redirect_uris=[REDIRECT])
    secret = client["client_secret"]
    verifier, challenge = pkce()
    authorize(smart, client["client_id"], REDIRECT, "user/*.rs", user, password="Not-The-Password-1!",
              challenge=challenge)
    code = code_from(authorize(smart, client["client_id"], REDIRECT, "user/*.rs offline_access", user,
                               challenge=challenge), REDIRECT)
    tokens = exchange(smart, client["client_id"], code, REDIRECT, verifier, auth=(client["client_id"], secret)).json()
    refreshed = smart.http.post(smart.token_url, auth=(client["client_id"], secret), data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}).json()
    assert smart.fhir("GET", "Patient", tokens["access_token"], params={"family": "Zyxwvutsrq"}).status_code == 200
    assert smart.fhir("GET", "Patient", "forged-token-value").status_code == 401
    server_logs = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert "/fhir/Patient" in server_logs and "/auth/token" in server_logs  # the access log was captured
    secrets = [PASSWORD, "Not-The-Password-1!", secret, code, tokens["access_token"], tokens["refresh_token"],
               refreshed["access_token"], refreshed["refresh_token"], "forged-token-value", "Zyxwvutsrq"]
    assert not [s for s in secrets if s in server_logs]
    refreshes = [e for e in audits(smart, altid=client["client_id"]) if subtype(e) == "token-refresh"]
    assert len(refreshes) == 1 and refreshes[0]["outcome"] == "0" and refreshes[0]["agent"][0]["name"] == user
    stored = orjson.dumps(audits(smart)).decode()
    assert not [s for s in secrets if s in stored]  # nor in the audit trail, where the query is base64
    assert base64.b64encode(b"Patient?family=Zyxwvutsrq").decode() in stored


def test_deleted_resources_answer_410_only_after_the_access_check(smart: Smart) -> None:
    mine, other = create(smart, {"resourceType": "Patient"}), create(smart, {"resourceType": "Patient"})
    obs = create(smart, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "subject": {"reference": f"Patient/{other}"}})
    assert smart.as_admin("DELETE", f"Observation/{obs}").status_code == 204
    outsider = user_token(smart, "doctor", "launch/patient patient/*.rs", patient=mine)
    insider = user_token(smart, "doctor", "launch/patient patient/*.rs", patient=other)
    for path in (f"Observation/{obs}", f"Observation/{obs}/_history/2"):
        assert smart.fhir("GET", path, outsider).status_code == 403, path  # not 410: no existence leak
        assert smart.fhir("GET", path, insider).status_code == 410, path
    receptionist = user_token(smart, "receptionist", "user/*.rs")  # the role never reads Observations
    assert smart.fhir("GET", f"Observation/{obs}", receptionist).status_code == 403


def test_rate_limits_are_shared_by_server_processes(backend: Backend) -> None:
    first_gen = smart_server(backend, auth_token_rate_per_minute=4)
    second_gen = smart_server(backend, auth_token_rate_per_minute=4)
    first, second = next(first_gen), next(second_gen)
    try:
        first.auth.token_limit.reset()
        client = first.store.create_client("svc", ["client_credentials"], "system/*.rs", [])
        auth = (client["client_id"], client["client_secret"])
        statuses = [(first if i % 2 else second).http.post((first if i % 2 else second).token_url,
                                                           data={"grant_type": "client_credentials"},
                                                           auth=auth).status_code for i in range(6)]
        assert statuses[:4] == [200, 200, 200, 200] and statuses[4:] == [429, 429]
    finally:
        first.auth.token_limit.reset()
        next(first_gen, None)
        next(second_gen, None)


def test_cli_registers_a_resource_server_that_may_introspect(smart: Smart, tmp_path: Path) -> None:
    import os
    env = {**os.environ, "FHIR_DATABASE_URL": smart.backend.settings.database_url}
    out = subprocess.run([sys.executable, "-m", "fhir_server.cli", "clients", "create", "--name", "gateway",
                          "--grant", "client_credentials", "--scope", "system/Patient.rs", "--resource-server"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    gateway = orjson.loads(out.stdout)
    assert gateway["resource_server"] is True
    token = user_token(smart, "doctor", "user/*.rs")
    r = smart.http.post(f"{smart.root}/auth/introspect", data={"token": token},
                        auth=(gateway["client_id"], gateway["client_secret"]))
    assert r.status_code == 200 and r.json()["active"] is True
    (asked,) = [e for e in audits(smart, altid=gateway["client_id"]) if subtype(e) == "token-introspection"]
    assert asked["outcome"] == "0" and token not in orjson.dumps(asked).decode()
    refused = smart.http.post(f"{smart.root}/auth/introspect", data={"token": token}, auth=("nobody-rs", "x"))
    assert refused.status_code == 401
    assert [e["outcome"] for e in audits(smart, altid="nobody-rs") if subtype(e) == "token-introspection"] == ["4"]


def test_client_registrations_and_launch_contexts_are_audited(smart: Smart) -> None:
    admin = user_token(smart, "admin", "user/*.cruds", fhir_user="Practitioner/adm-reg")
    nurse = user_token(smart, "nurse", "user/*.rs", fhir_user="Practitioner/nurse-reg")
    meta = {"client_name": "audited app", "scope": "patient/*.rs", "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "none"}
    url = f"{smart.root}/auth/clients"
    assert smart.http.post(url, json=meta, headers={"Authorization": f"Bearer {admin}"}).status_code == 201
    assert smart.http.post(url, json=meta, headers={"Authorization": f"Bearer {nurse}"}).status_code == 403
    registered = [(e["outcome"], e["agent"][0]["who"]["reference"])
                  for e in audits(smart, subtype="client-registration")]
    assert ("0", "Practitioner/adm-reg") in registered and ("4", "Practitioner/nurse-reg") in registered
    pid = create(smart, {"resourceType": "Patient", "name": [{"family": "Launched"}]})
    r = smart.http.post(f"{smart.root}/auth/launch", json={"patient": pid},
                        headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200, r.text
    (launch,) = audits(smart, patient=pid, subtype="launch")
    assert launch["outcome"] == "0" and launch["agent"][0]["who"]["reference"] == "Practitioner/adm-reg"
