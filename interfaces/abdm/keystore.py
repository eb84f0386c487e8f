"""Our HIU's ephemeral Fidelius key pairs, sealed for storage in the tenant's own store.

A health-information request's private key must outlive the process that made it: the HIP pushes minutes
later, maybe after a restart, maybe to another API process. So the key pair is kept with the pull's Task, in
the tenant's database, sealed with AES-256-GCM under a key from the settings (``FHIR_ABDM_KEY_SECRET``;
without it, one derived from the gateway client secret). The Task's id is the associated data: a sealed
key copied onto another Task does not open. Nothing here is logged.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from interfaces.abdm.fidelius import KeyMaterial
from interfaces.abdm.settings import AbdmSettings

VERSION = "v1"


class KeyStoreError(RuntimeError):
    """No sealing key is configured, or a sealed key does not open (another key, or tampered)."""


def sealing_key(settings: AbdmSettings) -> bytes:
    secret = settings.key_secret.get_secret_value() or settings.client_secret.get_secret_value()
    if not secret:
        raise KeyStoreError("FHIR_ABDM_KEY_SECRET (or the gateway client secret) is needed to keep HIU keys")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"fhir-server abdm hiu key store v1").derive(secret.encode())


def seal(settings: AbdmSettings, keys: KeyMaterial, owner: str) -> str:
    """``v1.<base64 nonce + ciphertext>`` of the key pair, bound to ``owner`` (the Task id)."""
    plain = orjson.dumps({"d": str(keys.private), "x": str(keys.public[0]), "y": str(keys.public[1]),
                          "nonce": keys.nonce})
    iv = secrets.token_bytes(12)
    sealed = AESGCM(sealing_key(settings)).encrypt(iv, plain, owner.encode())
    return f"{VERSION}.{base64.b64encode(iv + sealed).decode()}"


def unseal(settings: AbdmSettings, sealed: str, owner: str) -> KeyMaterial:
    version, _, body = sealed.partition(".")
    if version != VERSION:
        raise KeyStoreError("unknown sealed key format")
    try:
        raw = base64.b64decode(body, validate=True)
        plain = AESGCM(sealing_key(settings)).decrypt(raw[:12], raw[12:], owner.encode())
    except (InvalidTag, ValueError) as exc:
        raise KeyStoreError("the sealed key does not open with this server's key secret") from exc
    data = orjson.loads(plain)
    return KeyMaterial(int(data["d"]), (int(data["x"]), int(data["y"])), str(data["nonce"]))


def secret_digest(secret: str) -> str:
    """What is kept of a push URL's secret: its SHA-256 (compared in constant time on each push)."""
    return hashlib.sha256(secret.encode()).hexdigest()
