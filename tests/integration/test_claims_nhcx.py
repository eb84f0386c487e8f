"""NHCX flavour (ABDM session token, PEM certificates in the registry, x-hcx-ben-abha-id, numeric workflow
codes), and the participant token and registry cache, against the sandbox in its own process."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from interfaces.claims.registry import ParticipantRegistry
from interfaces.claims.token import ParticipantToken
from tests.conftest import Backend, wait_until
from tests.integration.claims_support import (
    PAYER,
    PROVIDER,
    ClaimsServer,
    Sandbox,
    records,
    start_claims_server,
    start_sandbox,
    store,
)
from tests.integration.test_claims_hcx import CORRELATION, exchange, status_of, submit


@pytest.fixture(scope="module")
def nhcx_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield from start_sandbox(tmp_path_factory.mktemp("nhcx-sandbox"), flavour="nhcx")


@pytest.fixture(scope="module")
def nhcx(backend: Backend, nhcx_sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClaimsServer]:
    backend.truncate()
    yield from start_claims_server(backend, nhcx_sandbox, tmp_path_factory.mktemp("nhcx"), flavour="nhcx", ig=False)


def test_nhcx_claim_carries_abha_and_workflow_codes(nhcx: ClaimsServer, nhcx_sandbox: Sandbox) -> None:
    s = uuid.uuid4().hex[:8]
    store(nhcx, records(s))
    eligibility = submit(nhcx, f"CoverageEligibilityRequest/cer-{s}")
    claim = submit(nhcx, f"Claim/final-{s}")
    wait_until(lambda: status_of(nhcx, f"Claim/final-{s}", claim) == "complete", 30, "the NHCX claim decision")
    wait_until(lambda: status_of(nhcx, f"CoverageEligibilityRequest/cer-{s}", eligibility) == "complete", 30,
               "the NHCX eligibility")
    got = {r["headers"]["x-hcx-correlation_id"]: r["headers"] for r in nhcx_sandbox.received()["received"]}
    assert got[claim]["x-hcx-ben-abha-id"] == "91-1234-5678-9012"
    assert got[claim]["x-hcx-workflow_id"] == "15" and got[eligibility]["x-hcx-workflow_id"] == "1"
    assert got[claim]["x-hcx-status"] == "request.initiated"
    assert nhcx_sandbox.received()["tokens_issued"] >= 1  # through the ABDM session endpoint


def test_token_is_reused_then_refreshed_before_expiry(nhcx_sandbox: Sandbox) -> None:
    nhcx_sandbox.http.post("/_control/settings", json={"token_seconds": 61}).raise_for_status()
    try:
        token = ParticipantToken("nhcx", f"{nhcx_sandbox.url}/gateway/v3/sessions", PAYER, PAYER, "secret",
                                 margin=60)
        first = token()
        assert token() == first and token.fetched == 1  # still valid: reused
        wait_until(lambda: token() != first, 10, "a refreshed token one second before its expiry")
        assert token.fetched == 2
    finally:
        nhcx_sandbox.http.post("/_control/settings", json={"token_seconds": 600}).raise_for_status()


def test_registry_entries_are_cached_until_they_expire(nhcx_sandbox: Sandbox) -> None:
    cached = ParticipantRegistry(nhcx_sandbox.url, flavour="nhcx", ttl=3600)
    before = nhcx_sandbox.received()["searches"]
    first = cached.get(PAYER)
    assert cached.get(PAYER) is first and first.active and first.encryption_cert.startswith("-----BEGIN CERTIFICATE")
    assert nhcx_sandbox.received()["searches"] == before + 1
    expiring = ParticipantRegistry(nhcx_sandbox.url, flavour="nhcx", ttl=0)
    expiring.get(PAYER)
    expiring.get(PAYER)
    assert nhcx_sandbox.received()["searches"] == before + 3


def test_nhcx_error_response_is_recorded_on_the_claim(nhcx: ClaimsServer, nhcx_sandbox: Sandbox) -> None:
    s = uuid.uuid4().hex[:8]
    store(nhcx, records(s))
    nhcx_sandbox.script({"action": "/preauth/submit", "query": "Please send the admission note"})  # stays open
    pre = submit(nhcx, f"Claim/pre-{s}")
    wait_until(lambda: nhcx.search("CommunicationRequest", identifier=f"{CORRELATION}|{pre}"), 30, "the query")
    nhcx_sandbox.send(path="/error/response", correlation_id=pre, to=PROVIDER,
                      error_response={"code": "ERR_INVALID_PAYLOAD", "message": "Claim.item is missing"})
    wait_until(lambda: status_of(nhcx, f"Claim/pre-{s}", pre) == "error", 30, "the error recorded")
    assert exchange(nhcx.get(f"Claim/pre-{s}"), pre)["error"] == ["ERR_INVALID_PAYLOAD: Claim.item is missing"]
    gone = str(uuid.uuid4())  # about no exchange of ours: refused, nothing changes
    nhcx_sandbox.send(path="/error/response", correlation_id=gone, to=PROVIDER,
                      error_response={"code": "ERR_INVALID_PAYLOAD", "message": "whatever"})
    wait_until(lambda: [e for e in nhcx.search("AuditEvent", _count=200)
                        if "ERR_INVALID_CORRELATION_ID" in e.get("outcomeDesc", "")
                        and any(d.get("valueString") == gone for en in e["entity"] for d in en.get("detail", []))],
               30, "the refusal")


def params(resp: Any) -> dict[str, str]:
    assert resp.status_code == 202, resp.text
    return {q["name"]: next(v for k, v in q.items() if k.startswith("value")) for q in resp.json()["parameter"]}


def test_nhcx_cancel_and_insurance_plan(nhcx: ClaimsServer, nhcx_sandbox: Sandbox) -> None:
    s = uuid.uuid4().hex[:8]
    store(nhcx, records(s))
    pre = submit(nhcx, f"Claim/pre-{s}")
    wait_until(lambda: status_of(nhcx, f"Claim/pre-{s}", pre) == "complete", 30, "the pre-authorisation")
    json_type = {"Content-Type": "application/fhir+json"}
    cancel = params(nhcx.http.post(f"Claim/pre-{s}/$task", headers=json_type, json={
        "resourceType": "Parameters", "parameter": [{"name": "code", "valueCode": "cancel"}]}))["correlationId"]
    wait_until(lambda: status_of(nhcx, f"Claim/pre-{s}", cancel) == "complete", 30, "the cancellation")
    claim = nhcx.get(f"Claim/pre-{s}")
    assert claim["status"] == "cancelled" and exchange(claim, cancel)["payerStatus"] == ["completed: Cancelled"]
    plan_cid = params(nhcx.http.post(f"CoverageEligibilityRequest/cer-{s}/$insurance-plan", headers=json_type,
                                     json={"resourceType": "Parameters"}))["correlationId"]
    wait_until(lambda: status_of(nhcx, f"CoverageEligibilityRequest/cer-{s}", plan_cid) == "complete", 30, "the plan")
    [ref] = exchange(nhcx.get(f"CoverageEligibilityRequest/cer-{s}"), plan_cid)["response"]
    plan = nhcx.get(ref)
    assert plan["name"] == "Sandbox Health Shield" and plan["ownedBy"] == {"reference": f"Organization/payer-{s}"}
    got = {r["headers"]["x-hcx-correlation_id"]: r for r in nhcx_sandbox.received()["received"]}
    assert got[cancel]["path"] == "/task/submit" and got[cancel]["headers"]["x-hcx-workflow_id"] == "122"
    asked = got[plan_cid]["bundle"]["entry"][0]["resource"]
    assert got[plan_cid]["path"] == "/insuranceplan/request"
    assert asked["input"][0]["valueIdentifier"]["value"] == "POL-778899"
    assert "Sharma" not in json.dumps([got[cancel]["bundle"], got[plan_cid]["bundle"]])  # nothing of the patient's
    refused = nhcx.http.post(f"Claim/final-{s}/$task", headers=json_type, json={
        "resourceType": "Parameters", "parameter": [{"name": "code", "valueCode": "cancel"}]})
    assert refused.status_code == 422  # never submitted
