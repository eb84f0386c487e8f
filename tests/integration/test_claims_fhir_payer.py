"""FHIR-native payers (Da Vinci PAS style) behind the same ClaimsGateway as HCX: SMART Backend Services tokens
(private_key_jwt, checked by the payer), answers at once or queued and polled, eligibility too -- against the
sandbox's FHIR payer in its own process, through our real HTTP server, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from interfaces.claims.smart_client import ASSERTION_TYPE, BackendToken
from tests.conftest import Backend, wait_until
from tests.integration.claims_support import (
    SMART_CLIENT,
    ClaimsServer,
    Sandbox,
    records,
    smart_key,
    start_claims_server,
    start_sandbox,
    store,
)
from tests.integration.test_claims_hcx import exchange, status_of, submit

PAS = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/profile-pas-request-bundle"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield from start_sandbox(tmp_path_factory.mktemp("fhir-payer-sandbox"))


@pytest.fixture(scope="module")
def claims(backend: Backend, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClaimsServer]:
    backend.truncate()
    yield from start_claims_server(backend, sandbox, tmp_path_factory.mktemp("fhir-payer"), ig=False)


def fhir_payer_records(claims: ClaimsServer, sandbox: Sandbox) -> str:
    """The usual records, the payer reached at the sandbox's FHIR base (an Endpoint on its Organization)."""
    s = uuid.uuid4().hex[:8]
    resources = records(s)
    for r in resources:
        if r["id"] == f"payer-{s}":
            r["endpoint"] = [{"reference": f"Endpoint/fhir-{s}"}]
    endpoint = {"resourceType": "Endpoint", "id": f"fhir-{s}", "status": "active",
                "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                                   "code": "hl7-fhir-rest"},
                "payloadType": [{"text": "Claim"}], "address": f"{sandbox.url}/fhir"}
    store(claims, [endpoint, *resources])
    return s


def fhir_state(sandbox: Sandbox) -> dict[str, Any]:
    return dict(sandbox.http.get("/_control/fhir").json())


def test_claim_and_eligibility_answered_at_once_with_one_cached_token(claims: ClaimsServer,
                                                                      sandbox: Sandbox) -> None:
    s = fhir_payer_records(claims, sandbox)
    sandbox.script({"action": "fhir:Claim/$submit", "fail": 1})  # the payer is down once: retried
    cid = submit(claims, f"Claim/final-{s}")
    wait_until(lambda: status_of(claims, f"Claim/final-{s}", cid) == "complete", 30, "the payer's ClaimResponse")
    [response] = claims.search("ClaimResponse", request=f"Claim/final-{s}")
    assert response["outcome"] == "complete" and response["patient"] == {"reference": f"Patient/pat-{s}"}
    assert response["total"][0]["amount"]["value"] == 82500.0
    [sent] = [b for b in fhir_state(sandbox)["received"]
              if b["entry"][0]["resource"].get("identifier", [{}])[0].get("value") == f"final-{s}"]
    assert sent["type"] == "collection" and sent["meta"]["profile"] == [PAS]
    assert "Bystander" not in json.dumps(sent) and "Sharma" in json.dumps(sent)

    eligibility = submit(claims, f"CoverageEligibilityRequest/cer-{s}")  # eligibility at the same payer
    wait_until(lambda: status_of(claims, f"CoverageEligibilityRequest/cer-{s}", eligibility) == "complete", 30,
               "the payer's CoverageEligibilityResponse")
    [cover] = claims.search("CoverageEligibilityResponse", request=f"CoverageEligibilityRequest/cer-{s}")
    assert cover["insurance"][0]["inforce"] is True and cover["patient"] == {"reference": f"Patient/pat-{s}"}
    [asked] = [b for b in fhir_state(sandbox)["received"]
               if b["entry"][0]["resource"]["resourceType"] == "CoverageEligibilityRequest"
               and b["entry"][0]["resource"]["identifier"][0]["value"] == f"CER-{s}"]
    assert "meta" not in asked or "profile" not in asked["meta"]  # no NRCeS profile claimed outside India
    assert fhir_state(sandbox)["tokens_issued"] == 1  # one token, reused for all (it lasts five minutes)
    trail = [e for e in claims.search("AuditEvent", entity=f"Claim/final-{s}")
             if e["subtype"][0]["code"] == "Claim/$submit"]
    assert trail and trail[0]["agent"][1]["who"]["identifier"]["value"] == f"{sandbox.url}/fhir"


@pytest.mark.parametrize("task", [False, True], ids=["queued-claimresponse", "task"])
def test_a_queued_answer_is_polled_until_complete(claims: ClaimsServer, sandbox: Sandbox, task: bool) -> None:
    s = fhir_payer_records(claims, sandbox)
    polls_before = fhir_state(sandbox)["polls"]
    sandbox.script({"action": "fhir:Claim/$submit", "queued": True, "polls": 2, "task": task})
    cid = submit(claims, f"Claim/pre-{s}")
    wait_until(lambda: status_of(claims, f"Claim/pre-{s}", cid) == "complete", 30, "the polled answer")
    [response] = claims.search("ClaimResponse", request=f"Claim/pre-{s}")
    assert response["outcome"] == "complete" and response["preAuthRef"].startswith("PA-")
    # queued (stored as partial) then complete: the same ClaimResponse; the Task had nothing to store yet
    assert response["meta"]["versionId"] == ("1" if task else "2")
    assert fhir_state(sandbox)["polls"] - polls_before == 3 + (1 if task else 0)


def test_an_answer_queued_for_ever_ends_in_an_error(claims: ClaimsServer, sandbox: Sandbox) -> None:
    s = fhir_payer_records(claims, sandbox)
    sandbox.script({"action": "fhir:Claim/$submit", "queued": True, "polls": 99})
    cid = submit(claims, f"Claim/final-{s}")
    wait_until(lambda: status_of(claims, f"Claim/final-{s}", cid) == "error", 30, "the poll limit")
    assert "still queued after 5 polls" in exchange(claims.get(f"Claim/final-{s}"), cid)["error"][0]
    [response] = claims.search("ClaimResponse", request=f"Claim/final-{s}")
    assert response["outcome"] == "partial"


@pytest.mark.parametrize("case", ["good", "replayed", "wrong_aud", "expired", "too_long", "wrong_key",
                                  "unknown_client", "rsa"])
def test_the_payer_checks_the_client_assertion(claims: ClaimsServer, sandbox: Sandbox, case: str) -> None:
    payers = claims.fhir.claims
    ours: BackendToken = payers.fhir.token  # type: ignore[union-attr]
    url = f"{sandbox.url}/fhir-auth/token"
    client = ours
    if case == "wrong_key":  # our kid, another key: the signature must not verify
        client = BackendToken(SMART_CLIENT, smart_key(), key_id=ours.kid)
    elif case == "unknown_client":
        client = BackendToken("someone-else", smart_key())
    elif case == "rsa":  # RS384: registered beside the ES384 key
        client = BackendToken("rsa-client", smart_key("RSA"))
        sandbox.http.post("/_control/fhir-clients", json={"client_id": "rsa-client", "jwks": client.jwks()}
                          ).raise_for_status()
    now = int(time.time())
    assertion = client.assertion("https://elsewhere.example/token" if case == "wrong_aud" else url,
                                 now=now - 600 if case == "expired" else now)
    if case == "too_long":  # exp more than five minutes ahead
        assertion = client.assertion(url, now=now + 600)
    form = {"grant_type": "client_credentials", "scope": "system/Claim.c",
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
    first = httpx.post(url, data=form)
    if case in ("good", "replayed", "rsa"):
        assert first.status_code == 200, first.text
        assert first.json()["token_type"] == "bearer" and first.json()["expires_in"] > 0
        if case == "replayed":  # the same assertion again: its jti was used
            again = httpx.post(url, data=form)
            assert again.status_code == 401 and "jti" in again.json()["error_description"]
        return
    assert first.status_code == 401 and first.json()["error"] == "invalid_client"
    expected = {"wrong_aud": "aud", "expired": "exp", "too_long": "exp", "wrong_key": "signature",
                "unknown_client": "unknown client"}[case]
    assert expected in first.json()["error_description"]


def test_the_payer_refuses_requests_without_our_token(sandbox: Sandbox) -> None:
    resp = httpx.post(f"{sandbox.url}/fhir/Claim/$submit", json={"resourceType": "Bundle", "type": "collection"})
    assert resp.status_code == 401 and resp.json()["resourceType"] == "OperationOutcome"
