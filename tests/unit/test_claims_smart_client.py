"""The SMART backend-services client assertion (SMART App Launch 2.x) and how a FHIR payer's answers read as
protocol messages, without a network."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import KeySet

from fhir_server.config import Settings
from interfaces.claims import protocol as p
from interfaces.claims.fhir_payer import POLL, FhirPayerGateway
from interfaces.claims.smart_client import BackendToken


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.mark.parametrize(("key", "alg"), [(lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
                                          (lambda: rsa.generate_private_key(65537, 2048), "RS384")])
def test_assertion_is_what_backend_services_asks(key: object, alg: str) -> None:
    token = BackendToken("client-1", _pem(key()), scope="system/Claim.c")  # type: ignore[operator]
    assertion = token.assertion("https://payer.example/token", now=1_700_000_000)
    decoded = jwt.decode(assertion, KeySet.import_key_set(token.jwks()), algorithms=[alg])
    assert decoded.header == {"alg": alg, "kid": token.kid, "typ": "JWT"}
    claims = decoded.claims
    assert claims["iss"] == claims["sub"] == "client-1" and claims["aud"] == "https://payer.example/token"
    assert claims["exp"] - 1_700_000_000 == 300 and claims["jti"]
    assert token.assertion("https://payer.example/token") != assertion  # a fresh jti each time
    assert "d" not in token.jwks()["keys"][0]  # the public half only


def test_other_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="RS384"):
        BackendToken("client-1", _pem(ec.generate_private_key(ec.SECP256R1())))


def test_fhir_answers_read_as_protocol_messages() -> None:
    gateway = FhirPayerGateway(Settings(database_url="sqlite://"))
    done = {"resourceType": "ClaimResponse", "id": "r1", "outcome": "complete"}
    assert gateway.open(done) == ({p.STATUS: p.COMPLETE}, {"resourceType": "Bundle", "type": "collection",
                                                          "entry": [{"resource": done}]})
    headers, bundle = gateway.open({"resourceType": "Bundle", "entry": [{"resource": {**done, "outcome": "queued"}}]})
    assert headers == {p.STATUS: p.PARTIAL, POLL: "ClaimResponse/r1"} and bundle is not None
    assert gateway.open({"resourceType": "Task", "id": "t1", "status": "in-progress"}) == (
        {p.STATUS: p.PARTIAL, POLL: "Task/t1"}, None)
    assert gateway.open({"resourceType": "Task", "id": "../x", "status": "requested"})[0][POLL] is None
    failed, _ = gateway.open({"resourceType": "Task", "id": "t1", "status": "rejected",
                              "statusReason": {"text": "not covered"}})
    assert failed[p.STATUS] == p.ERROR and failed[p.ERROR_DETAILS]["message"] == "not covered"
    wrong, _ = gateway.open({"resourceType": "Patient"})
    assert wrong[p.ERROR_DETAILS]["code"] == p.ERR_WRONG_DOMAIN_PAYLOAD
