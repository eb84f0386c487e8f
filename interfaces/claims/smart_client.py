"""SMART Backend Services (SMART App Launch 2.x, "backend-services"): our bearer token for a FHIR payer.

The token endpoint is the one the payer's ``{base}/.well-known/smart-configuration`` names. We authenticate
with ``private_key_jwt`` (RFC 7523): ``POST token_endpoint`` form ``grant_type=client_credentials``,
``scope``, ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and
``client_assertion`` = a JWT signed RS384 (RSA key) or ES384 (EC P-384 key), header ``kid`` + ``typ: JWT``,
claims ``iss`` = ``sub`` = our client_id, ``aud`` = the token endpoint, ``exp`` at most five minutes ahead,
a fresh ``jti``. The access token is kept until a minute before ``expires_in`` runs out, per token endpoint.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_SECONDS = 300  # SMART: exp no more than five minutes in the future


def signing_key(pem: str) -> tuple[RSAKey | ECKey, str]:
    """(JWK, alg) of a PEM private key: RSA -> RS384, EC P-384 -> ES384 (the two SMART requires support of)."""
    key = serialization.load_pem_private_key(pem.encode(), None)
    if isinstance(key, rsa.RSAPrivateKey):
        return RSAKey.import_key(key), "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return ECKey.import_key(key), "ES384"
    raise ValueError("the SMART client key must be RSA (RS384) or EC P-384 (ES384)")


@dataclass
class BackendToken:
    client_id: str
    private_pem: str
    key_id: str | None = None
    scope: str = ""
    margin: float = 60.0  # a token is replaced this many seconds before it expires
    timeout: float = 10.0
    fetched: int = 0  # tokens fetched (tests, metrics)
    _endpoints: dict[str, str] = field(default_factory=dict)  # FHIR base -> token endpoint
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # token endpoint -> (token, expiry)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.key, self.alg = signing_key(self.private_pem)
        self.kid = self.key_id or self.key.thumbprint()

    def jwks(self) -> dict[str, Any]:
        """Our public JWK Set, as the payer registers it (SMART: by jwks_url or out of band)."""
        public = self.key.as_dict(private=False)
        return {"keys": [{**public, "kid": self.kid, "alg": self.alg, "use": "sig"}]}

    def assertion(self, token_endpoint: str, *, now: int | None = None) -> str:
        issued = int(time.time()) if now is None else now
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": token_endpoint, "iat": issued,
                  "exp": issued + ASSERTION_SECONDS, "jti": str(uuid.uuid4())}
        return jwt.encode({"alg": self.alg, "kid": self.kid, "typ": "JWT"}, claims, self.key,
                          algorithms=[self.alg])

    def token_endpoint(self, base: str) -> str:
        with self._lock:
            found = self._endpoints.get(base)
        if found:
            return found
        resp = httpx.get(f"{base}/.well-known/smart-configuration", timeout=self.timeout,
                         headers={"Accept": "application/json"})
        resp.raise_for_status()  # the payer is down: the delivery is retried
        endpoint = str(resp.json().get("token_endpoint") or "")
        if not endpoint.startswith(("https://", "http://")):
            raise ValueError(f"{base} names no token_endpoint in its smart-configuration")
        with self._lock:
            self._endpoints[base] = endpoint
        return endpoint

    def __call__(self, base: str) -> str:
        """A bearer token for the FHIR payer at ``base``, fetched once and reused until shortly before expiry."""
        endpoint = self.token_endpoint(base)
        with self._lock:
            held = self._tokens.get(endpoint)
            if held is not None and time.monotonic() < held[1] - self.margin:
                return held[0]
            resp = httpx.post(endpoint, timeout=self.timeout, data={
                "grant_type": "client_credentials", "scope": self.scope,
                "client_assertion_type": ASSERTION_TYPE, "client_assertion": self.assertion(endpoint)})
            if resp.status_code >= 400:  # the payer refused our client: say why (its error code, no secrets)
                error = resp.json().get("error") if "json" in resp.headers.get("content-type", "") else None
                raise PermissionError(f"the payer's token endpoint refused our client ({resp.status_code} {error})")
            data = resp.json()
            token = str(data["access_token"])
            self._tokens[endpoint] = (token, time.monotonic() + float(data.get("expires_in") or 300))
            self.fetched += 1
            return token

    def invalidate(self, base: str) -> None:
        """The payer answered 401: the next call fetches a new token."""
        with self._lock:
            endpoint = self._endpoints.get(base)
            if endpoint:
                self._tokens.pop(endpoint, None)
