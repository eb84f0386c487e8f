"""Fidelius: the encryption of health-information pushes in ABDM (HIP -> HIU), exactly as NHA's reference
implementations do it with BouncyCastle.

ECDH on BouncyCastle's ``curve25519``, which is the *short-Weierstrass* form of Curve25519 (y² = x³ + ax + b
mod 2²⁵⁵-19; the same group as X25519 but with Weierstrass point encoding and unclamped scalars, so
``cryptography``'s X25519 cannot be used on BouncyCastle keys, and ``cryptography`` has no custom-curve ECDH).
The point arithmetic is therefore done here with Python integers (affine coordinates). It is not constant
time: acceptable because every key pair is ephemeral, generated for one transfer and discarded.

Then: both 32-byte nonces XORed; salt = first 20 bytes, IV = last 12; key = HKDF-SHA256(shared x, salt, no
info, 32 bytes); AES-256-GCM (ciphertext ‖ 16-byte tag), base64. Sources: mgrmtech/fidelius-cli @4d9b4a5f
(EncryptionController, Utils), NHA "Encryption and Decryption Implementation Guidelines for FHIR data in
ABDM"; digest in PROTOCOLS.md §B8. The published vector is tests/unit/test_abdm_fidelius.py.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# BouncyCastle CustomNamedCurves "curve25519" (decoded from a BC X.509 key; PROTOCOLS.md §B8.1)
P = 2**255 - 19
A = 0x2AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA984914A144
B = 0x7B425ED097B425ED097B425ED097B425ED097B425ED097B4260B5E9C7710C864
GX = 0x2AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAD245A
GY = 0x20AE19A1B8A086B4E01EDD2C7748D14C923D4D7E6D7C61B229E9C5A27ECED3D9
N = 0x1000000000000000000000000000000014DEF9DEA2F79CD65812631A5CF5D3ED
H = 8

CRYPTO_ALG = "ECDH"
CURVE = "Curve25519"
PARAMETERS = "Curve25519/32byte random key"
NONCE_BYTES = 32

Point = tuple[int, int] | None  # None: the point at infinity


class FideliusError(ValueError):
    """Key material or ciphertext that cannot be used: malformed, not on the curve, or failed authentication."""


def _fe(value: int) -> bytes:
    return value.to_bytes(32, "big")  # fixed-length fields: variable-length ones break ~1 key in 256


def _double_j(x: int, y: int, z: int) -> tuple[int, int, int]:
    if y == 0 or z == 0:
        return 0, 1, 0
    yy = y * y % P
    s = 4 * x * yy % P
    m = (3 * x * x + A * pow(z, 4, P)) % P
    x3 = (m * m - 2 * s) % P
    return x3, (m * (s - x3) - 8 * yy * yy) % P, 2 * y * z % P


def _add_j(p1: tuple[int, int, int], p2: tuple[int, int, int]) -> tuple[int, int, int]:
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    if z1 == 0:
        return p2
    if z2 == 0:
        return p1
    z1z1, z2z2 = z1 * z1 % P, z2 * z2 % P
    u1, u2 = x1 * z2z2 % P, x2 * z1z1 % P
    s1, s2 = y1 * z2 * z2z2 % P, y2 * z1 * z1z1 % P
    if u1 == u2:
        return _double_j(x1, y1, z1) if s1 == s2 else (0, 1, 0)
    h, r = (u2 - u1) % P, (s2 - s1) % P
    hh = h * h % P
    hhh = h * hh % P
    x3 = (r * r - hhh - 2 * u1 * hh) % P
    return x3, (r * (u1 * hh - x3) - s1 * hhh) % P, h * z1 * z2 % P


def multiply(k: int, point: Point) -> Point:
    """k·point by double-and-add in Jacobian coordinates (one inversion at the end). Not constant time:
    ephemeral keys only, see the module docstring."""
    if point is None:
        return None
    result = (0, 1, 0)
    addend = (point[0], point[1], 1)
    while k > 0:
        if k & 1:
            result = _add_j(result, addend)
        addend = _double_j(*addend)
        k >>= 1
    x, y, z = result
    if z == 0:
        return None
    zi = pow(z, -1, P)
    return x * zi * zi % P, y * zi * zi * zi % P


def on_curve(point: Point) -> bool:
    if point is None:
        return False
    x, y = point
    return 0 <= x < P and 0 <= y < P and (y * y - (x * x * x + A * x + B)) % P == 0


G: Point = (GX, GY)

# DER of a BouncyCastle X.509 SubjectPublicKeyInfo with explicit curve parameters, up to the point's 04‖X‖Y
# (ecPublicKey OID, prime field p, a, b, G uncompressed, n, cofactor 8, BIT STRING header): 244 bytes.
_X509_PREFIX = (
    bytes.fromhex("308201313081ea06072a8648ce3d02013081de020101302b06072a8648ce3d01010220") + _fe(P)
    + bytes.fromhex("30440420") + _fe(A) + bytes.fromhex("0420") + _fe(B)
    + bytes.fromhex("044104") + _fe(GX) + _fe(GY) + bytes.fromhex("0220") + _fe(N)
    + bytes.fromhex("020108034200"))
assert len(_X509_PREFIX) == 244


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError, AttributeError):
        raise FideliusError(f"{what} is not valid base64") from None


def _sqrt(value: int) -> int:
    """A square root mod P (P ≡ 5 mod 8: Atkin's method), for compressed points."""
    root = pow(value, (P + 3) // 8, P)
    if root * root % P != value % P:
        root = root * pow(2, (P - 1) // 4, P) % P
    if root * root % P != value % P:
        raise FideliusError("the public key's x coordinate is not on the curve")
    return root


def decode_public(value: str) -> tuple[int, int]:
    """A peer's public key: raw uncompressed (65 bytes, 04‖X‖Y, what the guideline recommends), compressed
    (33 bytes), or BouncyCastle's X.509 SubjectPublicKeyInfo (309 bytes, what NHA's wrapper sends)."""
    data = _b64(value, "the public key")
    if len(data) == len(_X509_PREFIX) + 65:
        if data[:len(_X509_PREFIX)] != _X509_PREFIX:
            raise FideliusError("the X.509 public key is not on BouncyCastle's curve25519")
        data = data[len(_X509_PREFIX):]
    if len(data) == 65 and data[0] == 4:
        point: Point = (int.from_bytes(data[1:33], "big"), int.from_bytes(data[33:], "big"))
    elif len(data) == 33 and data[0] in (2, 3):
        x = int.from_bytes(data[1:], "big")
        if x >= P:
            raise FideliusError("the public key's x coordinate is out of range")
        y = _sqrt(x * x * x + A * x + B)
        point = (x, y if y & 1 == data[0] & 1 else P - y)
    else:
        raise FideliusError(f"the public key has {len(data)} bytes; expected an uncompressed point (65) "
                            "or an X.509 key (309)")
    if not on_curve(point):
        raise FideliusError("the public key is not a point on curve25519")
    assert point is not None
    return point


def encode_public(point: Point, *, x509: bool = False) -> str:
    if point is None:
        raise FideliusError("the point at infinity is not a public key")
    raw = b"\x04" + _fe(point[0]) + _fe(point[1])
    return base64.b64encode(_X509_PREFIX + raw if x509 else raw).decode()


def decode_private(value: str) -> int:
    """Java's BigInteger.toByteArray(): big-endian two's complement (33 bytes with a leading 00 sometimes)."""
    d = int.from_bytes(_b64(value, "the private key"), "big", signed=True)
    if not 0 < d < N:
        raise FideliusError("the private key is out of range")
    return d


def encode_private(d: int) -> str:
    length = d.bit_length() // 8 + 1  # room for the sign bit, as BigInteger.toByteArray()
    return base64.b64encode(d.to_bytes(length, "big", signed=True)).decode()


def shared_secret(own_private: int, peer_public: tuple[int, int]) -> bytes:
    """BouncyCastle's ECDHBasicAgreement: with cofactor h, (d·h⁻¹ mod n)·(h·Q); its affine x, 32 bytes."""
    d = pow(H, -1, N) * own_private % N
    point = multiply(d, multiply(H, peer_public))
    if point is None:
        raise FideliusError("the public key gives no shared secret (small-order point)")
    return _fe(point[0])


def _nonce(value: str, what: str) -> bytes:
    data = _b64(value, what)
    if len(data) != NONCE_BYTES:
        raise FideliusError(f"{what} has {len(data)} bytes; expected {NONCE_BYTES}")
    return data


def _key_and_iv(own_private: int, peer_public: str, nonce_a: str, nonce_b: str) -> tuple[bytes, bytes]:
    a, b = _nonce(nonce_a, "the nonce"), _nonce(nonce_b, "the peer's nonce")
    xor = bytes(x ^ y for x, y in zip(a, b, strict=True))  # symmetric: either side's order gives the same
    secret = shared_secret(own_private, decode_public(peer_public))
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=xor[:20], info=None).derive(secret)
    return key, xor[-12:]


def encrypt(plaintext: bytes | str, *, own_private: int, own_nonce: str, peer_public: str, peer_nonce: str) -> str:
    data = plaintext.encode("utf-8") if isinstance(plaintext, str) else plaintext
    key, iv = _key_and_iv(own_private, peer_public, own_nonce, peer_nonce)
    return base64.b64encode(AESGCM(key).encrypt(iv, data, None)).decode()


def decrypt(ciphertext: str, *, own_private: int, own_nonce: str, peer_public: str, peer_nonce: str) -> bytes:
    key, iv = _key_and_iv(own_private, peer_public, own_nonce, peer_nonce)
    data = _b64(ciphertext, "the content")
    try:
        return AESGCM(key).decrypt(iv, data, None)  # verifies the tag: a changed byte fails here
    except InvalidTag:
        raise FideliusError("the content failed authentication (tampered, or the wrong keys)") from None


@dataclass(frozen=True)
class KeyMaterial:
    """One side's ephemeral key pair and nonce for one transfer."""

    private: int
    public: tuple[int, int]
    nonce: str  # base64 of 32 random bytes

    @classmethod
    def generate(cls) -> KeyMaterial:
        d = secrets.randbelow(N - 1) + 1
        public = multiply(d, G)
        assert public is not None
        return cls(d, public, base64.b64encode(secrets.token_bytes(NONCE_BYTES)).decode())

    def public_value(self, *, x509: bool = False) -> str:
        return encode_public(self.public, x509=x509)

    def to_json(self, expiry: datetime | None = None, *, x509: bool = False) -> dict[str, Any]:
        """The ``keyMaterial`` object of an HI request or a data push (public parts only)."""
        expiry = expiry or datetime.now(UTC) + timedelta(hours=1)
        return {"cryptoAlg": CRYPTO_ALG, "curve": CURVE,
                "dhPublicKey": {"expiry": expiry.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "parameters": PARAMETERS,
                                "keyValue": self.public_value(x509=x509)},
                "nonce": self.nonce}

    def encrypt(self, plaintext: bytes | str, peer: Any) -> str:
        public, nonce = peer_key(peer)
        return encrypt(plaintext, own_private=self.private, own_nonce=self.nonce, peer_public=public,
                       peer_nonce=nonce)

    def decrypt(self, ciphertext: str, peer: Any) -> bytes:
        public, nonce = peer_key(peer)
        return decrypt(ciphertext, own_private=self.private, own_nonce=self.nonce, peer_public=public,
                       peer_nonce=nonce)


def peer_key(key_material: Any) -> tuple[str, str]:
    """(public key, nonce) of a ``keyMaterial`` object, checked: the right algorithm and curve, a usable key."""
    if not isinstance(key_material, dict):
        raise FideliusError("keyMaterial is missing")
    if str(key_material.get("cryptoAlg", "")).upper() != CRYPTO_ALG or \
            str(key_material.get("curve", "")).lower() != CURVE.lower():
        raise FideliusError("keyMaterial must be ECDH on Curve25519")
    dh = key_material.get("dhPublicKey")
    public = dh.get("keyValue") if isinstance(dh, dict) else None
    nonce = key_material.get("nonce")
    if not isinstance(public, str) or not isinstance(nonce, str):
        raise FideliusError("keyMaterial needs dhPublicKey.keyValue and nonce")
    decode_public(public)
    _nonce(nonce, "keyMaterial.nonce")
    return public, nonce
