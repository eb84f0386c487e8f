"""Fidelius against the published vector (fidelius-cli README @4d9b4a5f, PROTOCOLS.md §B8.5), both ways."""

from __future__ import annotations

import base64

import pytest

from interfaces.abdm import fidelius
from interfaces.abdm.fidelius import FideliusError, KeyMaterial

REQUESTER_PRIVATE = "DMxHPri8d7IT23KgLk281zZenMfVHSdeamq0RhwlIBk="
REQUESTER_PUBLIC = "BAheD5rUqTy4V5xR4/6HWmYpopu5CO+KO8BECS0udNqUTSNo91TIqIIy1A4Vh+F94c+n9vAcwXU2bGcfsI5f69Y="
REQUESTER_NONCE = "6uj1RdDUbcpI3lVMZvijkMC8Te20O4Bcyz0SyivX8Eg="
SENDER_PRIVATE = "AYhVZpbVeX4KS5Qm/W0+9Ye2q3rnVVGmqRICmseWni4="
SENDER_PUBLIC = "BABVt+mpRLMXiQpIfEq6bj8hlXsdtXIxLsspmMgLNI1SR5mHgDVbjHO2A+U4QlMddGzqyEidzm1AkhtSxSO2Ahg="
SENDER_NONCE = "lmXgblZwotx+DfBgKJF0lZXtAXgBEYr5khh79Zytr2Y="
PLAINTEXT = "Wormtail should never have been Potter cottage's secret keeper."
CIPHERTEXT = ("pzMvVZNNVtJzqPkkxcCbBUWgDEBy/mBXIeT2dJWI16ZAQnnXUb9lI+S4k8XK6mgZSKKSRIHkcNvJpllnBg548wUgavBa0vCRRwdL6k"
              "Y6Yw==")
# The vector's X.509 form of the requester key starts like this (BouncyCastle, explicit parameters).
X509_START = "MIIBMTCB6gYHKoZIzj0CATCB3gIBATArBgcqhkjOPQEBAiB/////////////////////////////////////////7TBEBCAq"


def test_public_keys_derive_from_private_keys() -> None:
    for private, public in ((REQUESTER_PRIVATE, REQUESTER_PUBLIC), (SENDER_PRIVATE, SENDER_PUBLIC)):
        assert fidelius.encode_public(fidelius.multiply(fidelius.decode_private(private), fidelius.G)) == public


def test_sender_encrypts_to_the_published_ciphertext() -> None:
    out = fidelius.encrypt(PLAINTEXT, own_private=fidelius.decode_private(SENDER_PRIVATE), own_nonce=SENDER_NONCE,
                           peer_public=REQUESTER_PUBLIC, peer_nonce=REQUESTER_NONCE)
    assert out == CIPHERTEXT


def test_sender_with_the_x509_requester_key_gives_the_same_ciphertext() -> None:
    x509 = fidelius.encode_public(fidelius.decode_public(REQUESTER_PUBLIC), x509=True)
    assert x509.startswith(X509_START) and len(x509) == 412
    out = fidelius.encrypt(PLAINTEXT, own_private=fidelius.decode_private(SENDER_PRIVATE), own_nonce=SENDER_NONCE,
                           peer_public=x509, peer_nonce=REQUESTER_NONCE)
    assert out == CIPHERTEXT


def test_requester_decrypts_the_published_ciphertext() -> None:
    out = fidelius.decrypt(CIPHERTEXT, own_private=fidelius.decode_private(REQUESTER_PRIVATE),
                           own_nonce=REQUESTER_NONCE, peer_public=SENDER_PUBLIC, peer_nonce=SENDER_NONCE)
    assert out.decode() == PLAINTEXT


def test_shared_secret_is_symmetric_and_private_keys_round_trip() -> None:
    d_r, d_s = fidelius.decode_private(REQUESTER_PRIVATE), fidelius.decode_private(SENDER_PRIVATE)
    assert fidelius.shared_secret(d_r, fidelius.decode_public(SENDER_PUBLIC)) == \
        fidelius.shared_secret(d_s, fidelius.decode_public(REQUESTER_PUBLIC))
    assert fidelius.decode_private(fidelius.encode_private(d_r)) == d_r


def test_fresh_key_material_round_trips_in_both_key_encodings() -> None:
    hiu, hip = KeyMaterial.generate(), KeyMaterial.generate()
    for x509 in (False, True):
        content = hip.encrypt("{\"resourceType\": \"Bundle\"}", hiu.to_json(x509=x509))
        assert hiu.decrypt(content, hip.to_json(x509=x509)) == b"{\"resourceType\": \"Bundle\"}"


def test_compressed_public_key_decodes_to_the_same_point() -> None:
    x, y = fidelius.decode_public(SENDER_PUBLIC)
    compressed = base64.b64encode(bytes([2 + (y & 1)]) + x.to_bytes(32, "big")).decode()
    assert fidelius.decode_public(compressed) == (x, y)


def test_tampered_ciphertext_fails_authentication() -> None:
    raw = bytearray(base64.b64decode(CIPHERTEXT))
    raw[5] ^= 1
    with pytest.raises(FideliusError, match="authentication"):
        fidelius.decrypt(base64.b64encode(bytes(raw)).decode(), own_private=fidelius.decode_private(REQUESTER_PRIVATE),
                         own_nonce=REQUESTER_NONCE, peer_public=SENDER_PUBLIC, peer_nonce=SENDER_NONCE)


def test_wrong_nonce_fails_authentication() -> None:
    with pytest.raises(FideliusError, match="authentication"):
        fidelius.decrypt(CIPHERTEXT, own_private=fidelius.decode_private(REQUESTER_PRIVATE),
                         own_nonce=SENDER_NONCE, peer_public=SENDER_PUBLIC, peer_nonce=SENDER_NONCE)


@pytest.mark.parametrize("key", [
    "not base64!",
    base64.b64encode(b"\x04" + b"\x01" * 64).decode(),  # not on the curve
    base64.b64encode(b"\x04" + b"\x00" * 10).decode(),  # wrong length
    base64.b64encode(b"\x00" * 309).decode(),  # X.509 length, not BC's curve
])
def test_malformed_public_keys_are_refused(key: str) -> None:
    with pytest.raises(FideliusError):
        fidelius.decode_public(key)


def test_key_material_is_checked() -> None:
    good = KeyMaterial.generate().to_json()
    with pytest.raises(FideliusError, match="Curve25519"):
        fidelius.peer_key({**good, "curve": "P-256"})
    with pytest.raises(FideliusError, match="bytes"):
        fidelius.peer_key({**good, "nonce": base64.b64encode(b"short").decode()})
