"""Claims over the encrypted HCX protocol against the sandbox gateway + payer in its own process, through
our real HTTP server, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from fhir_server.jobs.outbox_admin import retry
from tests.conftest import Backend, wait_until
from tests.integration.claims_support import (
    PAYER,
    PAYER2,
    ClaimsServer,
    Sandbox,
    records,
    start_claims_server,
    start_sandbox,
    store,
)

CORRELATION = "urn:fhir-server:hcx:correlation-id"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield from start_sandbox(tmp_path_factory.mktemp("sandbox"))


@pytest.fixture(scope="module")
def claims(backend: Backend, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClaimsServer]:
    backend.truncate()
    yield from start_claims_server(backend, sandbox, tmp_path_factory.mktemp("claims"))


def submit(server: ClaimsServer, ref: str) -> str:
    resp = server.http.post(f"{ref}/$submit", json={"resourceType": "Parameters"},
                            headers={"Content-Type": "application/fhir+json"})
    assert resp.status_code == 202, resp.text
    params = {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in resp.json()["parameter"]}
    return str(params["correlationId"])


def exchange(resource: dict[str, Any], correlation_id: str) -> dict[str, list[str]]:
    for ext in resource.get("extension", []):
        parts: dict[str, list[str]] = {}
        for part in ext.get("extension", []):
            value = next(v for k, v in part.items() if k.startswith("value"))
            parts.setdefault(part["url"], []).append(value["reference"] if isinstance(value, dict) else value)
        if parts.get("correlationId") == [correlation_id]:
            return parts
    return {}


def status_of(server: ClaimsServer, ref: str, correlation_id: str) -> str | None:
    return (exchange(server.get(ref), correlation_id).get("status") or [None])[0]


def audits(server: ClaimsServer, outcome_desc: str) -> list[dict[str, Any]]:
    events = server.search("AuditEvent", _count=200, _sort="-_lastUpdated")
    return [e for e in events if outcome_desc in e.get("outcomeDesc", "")]


def test_cover_preauth_with_query_claim_and_payment(claims: ClaimsServer, sandbox: Sandbox) -> None:
    s = uuid.uuid4().hex[:8]
    store(claims, records(s))
    # 1. cover checked
    cid = submit(claims, f"CoverageEligibilityRequest/cer-{s}")
    wait_until(lambda: claims.search("CoverageEligibilityResponse", request=f"CoverageEligibilityRequest/cer-{s}"),
               30, "the eligibility response")
    [eligibility] = claims.search("CoverageEligibilityResponse", request=f"CoverageEligibilityRequest/cer-{s}")
    assert eligibility["outcome"] == "complete" and eligibility["insurance"][0]["inforce"] is True
    assert eligibility["patient"] == {"reference": f"Patient/pat-{s}"}
    wait_until(lambda: status_of(claims, f"CoverageEligibilityRequest/cer-{s}", cid) == "complete", 10, "closed")

    # 2. pre-authorisation: the payer asks a question first, billing staff answer with the document
    sandbox.script({"action": "/preauth/submit", "query": "Please send the admission note"})
    pre = submit(claims, f"Claim/pre-{s}")
    wait_until(lambda: claims.search("CommunicationRequest", identifier=f"{CORRELATION}|{pre}"), 30, "the query")
    [query] = claims.search("CommunicationRequest", identifier=f"{CORRELATION}|{pre}")
    assert query["about"] == [{"reference": f"Claim/pre-{s}"}] and query["subject"]["reference"] == f"Patient/pat-{s}"
    assert query["payload"][0]["contentString"] == "Please send the admission note"
    assert claims.search("ClaimResponse", request=f"Claim/pre-{s}") == []  # not decided before the answer
    answer = {"resourceType": "Communication", "status": "completed", "basedOn": [{"reference":
              f"CommunicationRequest/{query['id']}"}], "subject": {"reference": f"Patient/pat-{s}"},
              "about": [{"reference": f"Claim/pre-{s}"}],
              "payload": [{"contentReference": {"reference": f"DocumentReference/doc-{s}"}}]}
    created = claims.http.post("Communication", json=answer, headers={"Content-Type": "application/fhir+json"})
    assert created.status_code == 201, created.text
    submit(claims, f"Communication/{created.json()['id']}")
    wait_until(lambda: claims.search("ClaimResponse", request=f"Claim/pre-{s}"), 30, "the pre-authorisation")
    [preauth] = claims.search("ClaimResponse", request=f"Claim/pre-{s}")
    assert preauth["outcome"] == "complete" and preauth["preAuthRef"].startswith("PA-")
    assert preauth["use"] == "preauthorization" and preauth["patient"] == {"reference": f"Patient/pat-{s}"}
    assert claims.get(f"CommunicationRequest/{query['id']}")["status"] == "completed"

    # 3. the claim, built from the hospital's invoice: the gateway is down twice (retried), approved, then paid
    made = claims.http.post(f"Invoice/inv-{s}/$claim", headers={"Content-Type": "application/fhir+json"}, json={
        "resourceType": "Parameters", "parameter": [{"name": "preauthorization",
                                                     "valueReference": {"reference": f"Claim/pre-{s}"}}]})
    assert made.status_code == 201, made.text
    claim = made.json()
    assert [i["net"]["value"] for i in claim["item"]] == [70000.0, 12500.0] and claim["total"]["value"] == 82500.0
    assert claim["insurance"][0]["preAuthRef"] == [preauth["preAuthRef"]]
    final_ref = f"Claim/{claim['id']}"
    sandbox.script({"action": "/claim/submit", "fail": 2}, {"action": "/claim/submit", "pay": True})
    final = submit(claims, final_ref)
    wait_until(lambda: claims.search("PaymentNotice", request=final_ref), 60, "the payment")
    [claim_response] = claims.search("ClaimResponse", request=final_ref)
    assert claim_response["outcome"] == "complete" and claim_response["total"][0]["amount"]["value"] == 82500.0
    [notice] = claims.search("PaymentNotice", request=final_ref)
    assert notice["amount"] == {"value": 82500.0, "currency": "INR"}
    reconciliation = claims.get(notice["payment"]["reference"])
    assert reconciliation["paymentAmount"]["value"] == 82500.0
    assert status_of(claims, final_ref, final) == "complete"
    wait_until(lambda: any(r["path"] == "/paymentnotice/on_request" and r["headers"]["x-hcx-correlation_id"] == final
                           for r in sandbox.received()["received"]), 30, "the payment acknowledgement")

    # what left the hospital: encrypted (the sandbox had to decrypt), and only this patient's own records
    got = [r for r in sandbox.received()["received"]
           if r["headers"]["x-hcx-correlation_id"] in (cid, pre, final)]
    assert {r["path"] for r in got} >= {"/coverageeligibility/check", "/preauth/submit", "/communication/on_request",
                                         "/claim/submit", "/paymentnotice/on_request"}
    assert all(r["error"] is None and r["headers"]["alg"] == "RSA-OAEP-256" for r in got)
    text = json.dumps([r["bundle"] for r in got])
    assert "Sharma" in text and "Bystander" not in text and "91-9999-8888-7777" not in text
    assert f"enc-other-{s}" not in text and f"pat-{s}" not in text  # not even our ids
    claim_bundle = next(r["bundle"] for r in got if r["path"] == "/claim/submit")
    kinds = sorted(e["resource"]["resourceType"] for e in claim_bundle["entry"])
    assert kinds == ["Claim", "Coverage", "DocumentReference", "Encounter", "Organization", "Organization",
                     "Patient"]
    assert claim_bundle["type"] == "collection" and claim_bundle["entry"][0]["resource"]["resourceType"] == "Claim"
    answer_bundle = next(r["bundle"] for r in got if r["path"] == "/communication/on_request")
    assert [e["resource"]["resourceType"] for e in answer_bundle["entry"]][:2] == ["Task", "Communication"]
    assert answer_bundle["meta"]["profile"] == ["https://nrces.in/ndhm/fhir/r4/StructureDefinition/TaskBundle"]
    assert "DocumentReference" in [e["resource"]["resourceType"] for e in answer_bundle["entry"]]

    # every exchange is an AuditEvent naming the claim, written as the system acting for that claim
    def trail() -> list[dict[str, Any]]:
        return [e for e in claims.search("AuditEvent", entity=final_ref, _count=100)
                if e["subtype"][0]["system"] == "https://hcxprotocol.io/api"]

    wait_until(lambda: len(trail()) == 4, 20, "four exchanges audited")
    apis = sorted(e["subtype"][0]["code"] for e in trail())
    assert apis == ["/claim/on_submit", "/claim/submit", "/paymentnotice/on_request", "/paymentnotice/request"]
    assert all(e["agent"][0]["purposeOfUse"][0]["text"] in (f"HCX callback for {final_ref}",
                                                             f"HCX request for {final_ref}") for e in trail())


def test_partial_then_complete_and_duplicates_change_nothing(claims: ClaimsServer, sandbox: Sandbox) -> None:
    s = uuid.uuid4().hex[:8]
    store(claims, records(s))
    sandbox.script({"action": "/preauth/submit", "partial": True, "duplicate": True})
    cid = submit(claims, f"Claim/pre-{s}")
    wait_until(lambda: status_of(claims, f"Claim/pre-{s}", cid) == "complete", 30, "complete")
    wait_until(lambda: len([x for x in sandbox.received()["sent"] if x["headers"]["x-hcx-correlation_id"] == cid])
               == 3, 30, "partial, complete and its duplicate sent")
    claims.dispatcher.run_once()
    [response] = claims.search("ClaimResponse", request=f"Claim/pre-{s}")
    assert response["outcome"] == "complete" and response["meta"]["versionId"] == "2"  # partial, then complete
    history = claims.get(f"Claim/pre-{s}/_history")
    version = claims.get(f"Claim/pre-{s}")["meta"]["versionId"]
    wait_until(lambda: not claims.fhir.engine.connect().exec_driver_sql(
        "SELECT 1 FROM outbox WHERE status IN ('pending','delivering') AND topic = 'hcx-inbound'").first(), 20,
        "inbound queue drained")
    assert claims.get(f"Claim/pre-{s}")["meta"]["versionId"] == version
    assert len(exchange(claims.get(f"Claim/pre-{s}"), cid)["apiCallId"]) == 2  # the duplicate was not applied
    assert history["total"] >= 3


def test_redirect_resends_to_the_new_payer(claims: ClaimsServer, sandbox: Sandbox) -> None:
    s = uuid.uuid4().hex[:8]
    store(claims, records(s))
    sandbox.script({"action": "/claim/submit", "redirect": PAYER2})
    cid = submit(claims, f"Claim/final-{s}")
    wait_until(lambda: status_of(claims, f"Claim/final-{s}", cid) == "complete", 30, "the new payer's answer")
    sent_to = [r["headers"]["x-hcx-recipient_code"] for r in sandbox.received()["received"]
               if r["headers"]["x-hcx-correlation_id"] == cid]
    assert sent_to == [PAYER, PAYER2]
    assert exchange(claims.get(f"Claim/final-{s}"), cid)["payer"] == [PAYER2]


def test_gateway_down_retries_then_dead_letter(claims: ClaimsServer, sandbox: Sandbox) -> None:
    s = uuid.uuid4().hex[:8]
    store(claims, records(s))
    sandbox.script({"action": "/coverageeligibility/check", "fail": 3})
    cid = submit(claims, f"CoverageEligibilityRequest/cer-{s}")

    def dead() -> bool:
        with claims.fhir.engine.connect() as conn:
            row = conn.execute(text("SELECT status FROM outbox WHERE key LIKE :key"), {"key": f"{cid}:%"}).first()
        return row is not None and row[0] == "dead"

    wait_until(dead, 30, "the dead letter")
    assert status_of(claims, f"CoverageEligibilityRequest/cer-{s}", cid) == "undelivered"  # visible to staff
    assert exchange(claims.get(f"CoverageEligibilityRequest/cer-{s}"), cid)["error"][0].startswith(
        "ERR_SERVICE_UNAVAILABLE")
    assert not any(r["headers"]["x-hcx-correlation_id"] == cid for r in sandbox.received()["received"])
    assert retry(claims.fhir.engine, dead=True) >= 1  # `fhir-server outbox retry --dead`, the gateway back up
    wait_until(lambda: status_of(claims, f"CoverageEligibilityRequest/cer-{s}", cid) == "complete", 30,
               "the retried check answered")


def test_payer_refusal_is_recorded(claims: ClaimsServer, sandbox: Sandbox) -> None:
    s = uuid.uuid4().hex[:8]
    store(claims, records(s))
    sandbox.script({"action": "/claim/submit", "reject": "Policy lapsed"})
    cid = submit(claims, f"Claim/final-{s}")
    wait_until(lambda: status_of(claims, f"Claim/final-{s}", cid) == "error", 30, "the error")
    assert exchange(claims.get(f"Claim/final-{s}"), cid)["error"] == ["ERR_DOMAIN_PROCESSING: Policy lapsed"]


@pytest.mark.parametrize(("case", "code"), [
    ("tampered", "ERR_INVALID_ENCRYPTION"), ("wrong_recipient", "ERR_INVALID_RECIPIENT"),
    ("expired", "ERR_INVALID_TIMESTAMP"), ("reused_api_call_id", None),
    ("unknown_correlation", "ERR_INVALID_CORRELATION_ID"), ("wrong_sender", "ERR_INVALID_SENDER"),
    ("api_call_id_of_another_exchange", "ERR_INVALID_API_CALL_ID")])
def test_bad_callbacks_change_nothing(claims: ClaimsServer, sandbox: Sandbox, case: str, code: str | None) -> None:
    s = uuid.uuid4().hex[:8]
    store(claims, records(s))
    sandbox.script({"action": "/preauth/submit", "partial": True})
    cid = submit(claims, f"Claim/pre-{s}")
    wait_until(lambda: status_of(claims, f"Claim/pre-{s}", cid) == "complete", 30, "the first answer")
    before = claims.get(f"Claim/pre-{s}")
    [response_before] = claims.search("ClaimResponse", request=f"Claim/pre-{s}")
    first = next(x for x in sandbox.received()["sent"] if x["headers"]["x-hcx-correlation_id"] == cid)
    common: dict[str, Any] = {"path": "/preauth/on_submit", "correlation_id": cid, "kind": "claim_response",
                              "status": "response.complete"}
    extra = {"tampered": {"tamper": True}, "wrong_recipient": {"recipient_code": "hospital99@sandbox"},
             "expired": {"timestamp": "2020-01-01T00:00:00+05:30"},
             "reused_api_call_id": {"api_call_id": first["headers"]["x-hcx-api_call_id"]},
             "unknown_correlation": {"correlation_id": str(uuid.uuid4()), "from_correlation": cid},
             "wrong_sender": {"as": PAYER2}, "api_call_id_of_another_exchange": {}}[case]
    if case == "api_call_id_of_another_exchange":  # an id the eligibility check's answer already used
        other = submit(claims, f"CoverageEligibilityRequest/cer-{s}")
        wait_until(lambda: status_of(claims, f"CoverageEligibilityRequest/cer-{s}", other) == "complete", 30,
                   "the other exchange")
        used = next(x for x in sandbox.received()["sent"] if x["headers"]["x-hcx-correlation_id"] == other)
        extra = {"api_call_id": used["headers"]["x-hcx-api_call_id"]}
    sent = sandbox.send(**{**common, **extra, "to": "hospital01@sandbox"})
    if code is not None:
        wait_until(lambda: audits(claims, code), 30, f"the refusal {code}")
        [event] = [e for e in audits(claims, code) if any(d.get("valueString") == sent["headers"]["x-hcx-api_call_id"]
                                                          for en in e["entity"] for d in en.get("detail", []))]
        assert event["outcome"] == "4"
    else:
        wait_until(lambda: not claims.fhir.engine.connect().exec_driver_sql(
            "SELECT 1 FROM outbox WHERE status IN ('pending','delivering') AND topic = 'hcx-inbound'").first(), 20,
            "inbound queue drained")
    after = claims.get(f"Claim/pre-{s}")
    assert after["meta"]["versionId"] == before["meta"]["versionId"]
    assert claims.search("ClaimResponse", request=f"Claim/pre-{s}") == [response_before]


def test_nothing_leaves_that_fails_the_profile_or_concerns_another_patient(claims: ClaimsServer,
                                                                           sandbox: Sandbox) -> None:
    s = uuid.uuid4().hex[:8]
    resources = records(s)
    store(claims, resources)
    before = len(sandbox.received()["received"])
    claim = claims.get(f"Claim/final-{s}")
    bad = {**claim, "diagnosis": []}
    bad.pop("diagnosis")
    assert claims.http.put(f"Claim/final-{s}", json=bad, headers={"Content-Type": "application/fhir+json"}
                           ).status_code == 200
    resp = claims.http.post(f"Claim/final-{s}/$submit", json={"resourceType": "Parameters"},
                            headers={"Content-Type": "application/fhir+json"})
    assert resp.status_code == 422 and "ClaimBundle" in resp.text and "diagnosis" in resp.text
    leaky = {**claim, "item": [{**claim["item"][0], "encounter": [{"reference": f"Encounter/enc-other-{s}"}]}]}
    assert claims.http.put(f"Claim/final-{s}", json=leaky, headers={"Content-Type": "application/fhir+json"}
                           ).status_code == 200
    resp = claims.http.post(f"Claim/final-{s}/$submit", json={"resourceType": "Parameters"},
                            headers={"Content-Type": "application/fhir+json"})
    assert resp.status_code == 422 and "another patient" in resp.text
    assert "extension" not in claims.get(f"Claim/final-{s}")  # no exchange was opened
    assert len(sandbox.received()["received"]) == before


def test_callbacks_need_the_gateways_bearer(claims: ClaimsServer) -> None:
    body = {"x-hcx-status": "response.error", "x-hcx-correlation_id": str(uuid.uuid4())}
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}):
        resp = claims.http.post(f"{claims.root}/hcx/claim/on_submit", json=body, headers=headers)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "ERR_ACCESS_DENIED"


def test_status_is_asked_and_the_payers_answer_recorded(claims: ClaimsServer, sandbox: Sandbox) -> None:
    s = uuid.uuid4().hex[:8]
    store(claims, records(s))
    sandbox.script({"action": "/preauth/submit", "query": "Please send the admission note"})  # stays open
    pre = submit(claims, f"Claim/pre-{s}")
    wait_until(lambda: claims.search("CommunicationRequest", identifier=f"{CORRELATION}|{pre}"), 30, "the query")
    asked = claims.http.post(f"Claim/pre-{s}/$inquire", json={"resourceType": "Parameters"},
                             headers={"Content-Type": "application/fhir+json"})
    assert asked.status_code == 202, asked.text
    wait_until(lambda: exchange(claims.get(f"Claim/pre-{s}"), pre).get("payerStatus") == ["in-progress: Under review"],
               30, "the payer's /hcx/on_status")
    assert status_of(claims, f"Claim/pre-{s}", pre) == "sent"  # still open: a status answer decides nothing
    [sent] = [r for r in sandbox.received()["received"]
              if r["path"] == "/hcx/status" and r["headers"]["x-hcx-correlation_id"] == pre]
    task = sent["bundle"]["entry"][0]["resource"]
    assert task["code"]["coding"][0]["code"] == "status" and task["focus"]["identifier"]["value"] == f"pre-{s}"
    assert "Sharma" not in json.dumps(sent["bundle"])  # nothing of the patient's
    assert any(e["subtype"][0]["code"] == "/hcx/on_status" for e in claims.search("AuditEvent",
                                                                                   entity=f"Claim/pre-{s}"))
    none_open = claims.http.post(f"CoverageEligibilityRequest/cer-{s}/$inquire", json={"resourceType": "Parameters"},
                                 headers={"Content-Type": "application/fhir+json"})
    assert none_open.status_code == 422 and "no open HCX exchange" in none_open.text


def test_a_stored_binary_travels_embedded_and_never_another_patients(claims: ClaimsServer, sandbox: Sandbox) -> None:
    s = uuid.uuid4().hex[:8]
    resources = records(s)
    note = base64.b64encode(b"Discharge summary: appendectomy, uneventful").decode()
    binary = {"resourceType": "Binary", "id": f"bin-{s}", "contentType": "text/plain", "data": note,
              "securityContext": {"reference": f"Patient/pat-{s}"}}
    others = {"resourceType": "Binary", "id": f"bin-other-{s}", "contentType": "text/plain",
              "data": base64.b64encode(b"Ravi's scan").decode(), "securityContext": {"reference": f"Patient/other-{s}"}}
    for r in resources:
        if r["id"] == f"doc-{s}":
            r["content"] = [{"attachment": {"contentType": "text/plain", "title": "Discharge summary",
                                            "url": f"Binary/bin-{s}"}}]
    store(claims, [binary, others, *resources])
    cid = submit(claims, f"Claim/final-{s}")
    wait_until(lambda: any(r["headers"]["x-hcx-correlation_id"] == cid for r in sandbox.received()["received"]), 30,
               "the claim at the payer")
    [got] = [r for r in sandbox.received()["received"] if r["headers"]["x-hcx-correlation_id"] == cid]
    [doc] = [e["resource"] for e in got["bundle"]["entry"] if e["resource"]["resourceType"] == "DocumentReference"]
    attachment = doc["content"][0]["attachment"]
    assert attachment["data"] == note and attachment["size"] == 43 and "url" not in attachment
    assert attachment["contentType"] == "text/plain" and attachment["title"] == "Discharge summary"
    # the same document pointing at another patient's Binary: refused, nothing leaves
    doc_now = claims.get(f"DocumentReference/doc-{s}")
    doc_now["content"][0]["attachment"]["url"] = f"Binary/bin-other-{s}"
    assert claims.http.put(f"DocumentReference/doc-{s}", json=doc_now,
                           headers={"Content-Type": "application/fhir+json"}).status_code == 200
    before = len(sandbox.received()["received"])
    resp = claims.http.post(f"Claim/pre-{s}/$submit", json={"resourceType": "Parameters"},
                            headers={"Content-Type": "application/fhir+json"})
    assert resp.status_code == 422 and "another patient" in resp.text
    assert len(sandbox.received()["received"]) == before
