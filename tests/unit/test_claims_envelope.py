"""The HCX JWE envelope against the published test vector, and its failure modes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from interfaces.claims import envelope
from interfaces.claims.envelope import EnvelopeError

VECTORS = Path(__file__).parent.parent / "fixtures" / "hcx"


def _vector() -> str:
    return (VECTORS / "sdk-1.0.8-output-payload.jwe").read_text().strip()


def test_published_vector_decrypts_with_the_published_key() -> None:
    key = envelope.private_key((VECTORS / "x509-private-key.pem").read_bytes())
    header, body = envelope.decrypt_json(_vector(), key)
    assert header["alg"] == "RSA-OAEP-256" and header["enc"] == "A256GCM"
    assert header["x-hcx-correlation_id"] == "d4f56d79-4908-4a99-a8dd-a3b733fde8d6"
    assert header["x-hcx-api_call_id"] == "1e1797bd-dbed-4192-b0c9-cef772724be5"
    assert header["x-hcx-timestamp"] == "2022-10-27T11:07:48+0530"
    assert body["resourceType"] == "Bundle"
    kinds = [e["resource"]["resourceType"] for e in body["entry"]]
    assert kinds == ["Composition", "Organization", "Patient", "CoverageEligibilityRequest", "Organization",
                     "Coverage"]


def test_the_header_is_authenticated_as_received() -> None:
    """AAD = the received first segment: a header changed in transit (even re-serialised) fails."""
    key = envelope.private_key((VECTORS / "x509-private-key.pem").read_bytes())
    parts = _vector().split(".")
    header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    header["x-hcx-recipient_code"] = "someone-else@hcx"
    parts[0] = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    with pytest.raises(EnvelopeError) as err:
        envelope.decrypt(".".join(parts), key)
    assert err.value.code == "ERR_INVALID_ENCRYPTION"


def test_round_trip_both_algorithms_and_wrong_key() -> None:
    ours = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    headers = {"x-hcx-sender_code": "provider01@hcx", "x-hcx-recipient_code": "payer01@hcx"}
    for alg in ("RSA-OAEP-256", "RSA-OAEP"):
        token = envelope.encrypt(headers, {"resourceType": "Bundle"}, ours.public_key(), alg=alg)
        protected = envelope.protected_header(token)
        assert protected["alg"] == alg and protected["x-hcx-recipient_code"] == "payer01@hcx"
        assert envelope.decrypt_json(token, ours) == (protected, {"resourceType": "Bundle"})
        with pytest.raises(EnvelopeError):
            envelope.decrypt(token, other)
    token = envelope.encrypt(headers, {"resourceType": "Bundle"}, ours.public_key())
    assert envelope.protected_header(token)["alg"] == "RSA-OAEP-256"  # what we emit


def test_certificate_pem_gives_the_public_key() -> None:
    cert = (VECTORS / "x509-self-signed-certificate.pem").read_bytes()
    key = envelope.private_key((VECTORS / "x509-private-key.pem").read_bytes())
    assert envelope.public_key(cert).public_numbers() == key.public_key().public_numbers()


@pytest.mark.parametrize("payload", ["", "a.b.c", "a.b.c.d.e.f", "!!.x.y.z.w"])
def test_malformed_payloads_are_invalid_payload(payload: str) -> None:
    with pytest.raises(EnvelopeError) as err:
        envelope.protected_header(payload)
    assert err.value.code == "ERR_INVALID_PAYLOAD"
