"""The HCX message envelope: JWE compact serialization with every protocol header in the protected header.

HCX 0.9 (hcx-specs ``message-security-and-integrity.md``, OpenAPI ``JWEPayload``; NHCX as run by NHA):
``{"payload": "<protected>.<encrypted key>.<iv>.<ciphertext>.<tag>"}``, the protected header being the JOSE
header (``alg``, ``enc``) united with the ``x-hcx-*`` protocol and domain headers. No unprotected header,
one recipient. We emit ``RSA-OAEP-256`` + ``A256GCM`` (the Java SDK and NHCX) and accept ``RSA-OAEP`` too
(the 0.9 OpenAPI enum, the Python SDK). The AAD is the ASCII of the *received* first segment: joserfc (the
successor of authlib's jose, as fhir_server.auth uses) authenticates the segment as sent, never a re-serialized
header.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwe import JWERegistry
from joserfc.jwk import RSAKey

EMITTED_ALG = "RSA-OAEP-256"
ACCEPTED_ALGS = ("RSA-OAEP-256", "RSA-OAEP")
ENC = "A256GCM"
# x-hcx-* are private header parameters (RFC 7516 4.3): allowed, and all of them integrity-protected.
_REGISTRY = JWERegistry(algorithms=[*ACCEPTED_ALGS, ENC], strict_check_header=False)


class EnvelopeError(ValueError):
    """A payload that is not a well-formed HCX JWE, or that does not decrypt (ERR_INVALID_ENCRYPTION)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def public_key(pem: str | bytes) -> RSAPublicKey:
    """The RSA public key of a PEM X.509 certificate (the registry's ``encryption_cert``) or public key."""
    data = pem.encode() if isinstance(pem, str) else pem
    key = x509.load_pem_x509_certificate(data).public_key() if b"CERTIFICATE" in data \
        else serialization.load_pem_public_key(data)
    if not isinstance(key, RSAPublicKey):
        raise EnvelopeError("ERR_INVALID_ENCRYPTION", "the recipient's encryption key is not an RSA key")
    return key


def private_key(pem: str | bytes, password: bytes | None = None) -> RSAPrivateKey:
    data = pem.encode() if isinstance(pem, str) else pem
    key = serialization.load_pem_private_key(data, password)
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("the participant's private key is not an RSA key")
    return key


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def protected_header(payload: str) -> dict[str, Any]:
    """The protected header of a compact JWE, read without decrypting (the gateway's header checks and
    our synchronous acknowledgement need no key)."""
    parts = payload.split(".") if isinstance(payload, str) else []
    if len(parts) != 5 or not all(parts[i] for i in (0, 2, 3, 4)):  # ek may be empty only for "dir"
        raise EnvelopeError("ERR_INVALID_PAYLOAD", "the payload is not a JWE compact serialization "
                                                   "(five base64url segments)")
    try:
        header = json.loads(_b64decode(parts[0]))
    except ValueError as exc:
        raise EnvelopeError("ERR_INVALID_PAYLOAD", "the JWE protected header is not base64url JSON") from exc
    if not isinstance(header, dict):
        raise EnvelopeError("ERR_INVALID_PAYLOAD", "the JWE protected header is not a JSON object")
    return header


def encrypt(headers: Mapping[str, Any], body: Mapping[str, Any] | bytes, recipient: RSAPublicKey, *,
            alg: str = EMITTED_ALG) -> str:
    """``headers`` (the x-hcx-* protocol and domain headers) + the JOSE header, protected; ``body`` (a FHIR
    Bundle) encrypted for ``recipient``. Returns the compact serialization."""
    if alg not in ACCEPTED_ALGS:
        raise ValueError(f"unsupported key management algorithm {alg}")
    protected = {**{k: v for k, v in headers.items() if k not in ("alg", "enc")}, "alg": alg, "enc": ENC}
    plaintext = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return jwe.encrypt_compact(protected, plaintext, RSAKey.import_key(recipient), registry=_REGISTRY)


def decrypt(payload: str, key: RSAPrivateKey) -> tuple[dict[str, Any], bytes]:
    """(protected header, plaintext) of a compact JWE addressed to ``key``. Any failure to decrypt or
    authenticate -- wrong key, altered header, ciphertext or tag -- is ERR_INVALID_ENCRYPTION."""
    header = protected_header(payload)
    if header.get("alg") not in ACCEPTED_ALGS or header.get("enc") != ENC:
        raise EnvelopeError("ERR_INVALID_ENCRYPTION",
                            f"unsupported JWE algorithms alg={header.get('alg')} enc={header.get('enc')}")
    try:
        data = jwe.decrypt_compact(payload, RSAKey.import_key(key), registry=_REGISTRY)
    except (JoseError, InvalidTag, ValueError, TypeError) as exc:
        raise EnvelopeError("ERR_INVALID_ENCRYPTION", "the payload does not decrypt with our key") from exc
    return header, bytes(data.plaintext or b"")


def decrypt_json(payload: str, key: RSAPrivateKey) -> tuple[dict[str, Any], dict[str, Any]]:
    header, plaintext = decrypt(payload, key)
    try:
        body = json.loads(plaintext)
    except ValueError as exc:
        raise EnvelopeError("ERR_INVALID_PAYLOAD", "the decrypted payload is not JSON") from exc
    if not isinstance(body, dict):
        raise EnvelopeError("ERR_INVALID_PAYLOAD", "the decrypted payload is not a JSON object")
    return header, body
