"""Registered clients as authlib sees them, and private_key_jwt client authentication (RFC 7523).

SMART Backend Services: the client signs a JWT assertion with its own key (RS384 or ES384), whose public
half we hold as a JWKS (or fetch from its jwks_uri). The assertion's ``exp`` may be at most five minutes
ahead, and each ``jti`` is accepted once (kept until the assertion expires).
"""

from __future__ import annotations

import hmac
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from authlib.oauth2.rfc6749 import ClientMixin, InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from fhir_server.auth.scopes import grantable
from fhir_server.auth.store import AuthStore, digest

ASSERTION_ALGORITHMS = ["RS384", "ES384", "RS256", "ES256", "RS512", "ES512"]
MAX_ASSERTION_SECONDS = 300
CLOCK_SKEW = 30


@dataclass(frozen=True)
class Urls:
    """Where this server is reached, for the request being handled (issuer = the FHIR base URL)."""

    issuer: str
    authorize: str
    token: str
    introspect: str
    revoke: str
    jwks: str
    launch: str

    @classmethod
    def at(cls, root: str, fhir_base: str) -> Urls:
        auth = root.rstrip("/") + "/auth"
        return cls(fhir_base.rstrip("/"), f"{auth}/authorize", f"{auth}/token", f"{auth}/introspect",
                   f"{auth}/revoke", f"{auth}/jwks", f"{auth}/launch")


CURRENT_URLS: ContextVar[Urls] = ContextVar("auth_urls")


@dataclass
class Client(ClientMixin):
    client_id: str
    name: str
    secret_hash: str | None
    public: bool
    auth_method: str
    grant_types: list[str]
    redirect_uris: list[str]
    scope: str
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    resource_server: bool = False  # may introspect tokens issued to other clients
    _extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Any) -> Client:
        return cls(row.client_id, row.name, row.secret_hash, row.public, row.auth_method, list(row.grant_types),
                   list(row.redirect_uris), row.scope, row.jwks, row.jwks_uri, bool(row.resource_server))

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return self.scope if "client_credentials" in self.grant_types else ""
        return grantable(scope, self.scope)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        if redirect_uri in self.redirect_uris:  # exact match only, no prefix or pattern
            return True
        # A registered path ("/console/callback", the server's own console): that page on this server, at the
        # address the browser reached the sign-in page by (never a host a request could name elsewhere).
        urls = CURRENT_URLS.get(None)
        root = urls.authorize.removesuffix("/auth/authorize") if urls is not None else None
        return root is not None and any(u.startswith("/") and redirect_uri == root + u for u in self.redirect_uris)

    def check_client_secret(self, client_secret: str) -> bool:
        # Generated 256-bit secrets need no slow hash (unlike passwords): SHA-256, compared in constant time.
        return self.secret_hash is not None and hmac.compare_digest(self.secret_hash, digest(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


_JWKS_CACHE: dict[str, tuple[float, dict[str, Any]]] = {}


def client_keys(client: Client) -> KeySet:
    if client.jwks is not None:
        return KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]
    if not client.jwks_uri:
        raise InvalidClientError(description="The client has no registered keys")
    cached = _JWKS_CACHE.get(client.jwks_uri)
    if cached is None or time.monotonic() - cached[0] > 300:
        try:
            response = httpx.get(client.jwks_uri, timeout=5.0)
            response.raise_for_status()
            cached = (time.monotonic(), response.json())
        except (httpx.HTTPError, ValueError) as exc:
            raise InvalidClientError(description="The client's jwks_uri could not be read") from exc
        _JWKS_CACHE[client.jwks_uri] = cached
    return KeySet.import_key_set(cached[1])  # type: ignore[arg-type]


class PrivateKeyJwt(JWTBearerClientAssertion):
    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, store: AuthStore) -> None:
        super().__init__(validate_jti=True, leeway=CLOCK_SKEW)
        self.store = store

    def get_audiences(self) -> list[str]:
        urls = CURRENT_URLS.get()
        return [urls.token, urls.introspect, urls.revoke]

    def resolve_client_public_key(self, client: Client) -> KeySet:
        return client_keys(client)

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=ASSERTION_ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description="The client assertion's signature is not valid") from exc
        claims = dict(token.claims)
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp > time.time() + MAX_ASSERTION_SECONDS + CLOCK_SKEW:
            raise InvalidClientError(description="The client assertion's exp must be at most 5 minutes ahead")
        self.verify_claims(claims)
        return claims

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        expires = datetime.fromtimestamp(float(claims["exp"]), UTC)
        return self.store.first_use_of_assertion(str(claims["iss"])[:64], str(jti)[:255], expires)
