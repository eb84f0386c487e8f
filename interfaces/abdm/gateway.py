"""The HIE-CM gateway, API v3: our session (client credentials -> bearer token, refreshed before it expires),
the headers every call carries, and the check of the gateway's own token on the calls it makes to us.

Headers (PROTOCOLS.md §B3; NHA ABDM-wrapper ``Utils.getCustomHeaders``, care_abdm ``service/v3/gateway.py``):
``Authorization: Bearer``, ``REQUEST-ID`` (uuid), ``TIMESTAMP`` (UTC, milliseconds, ``Z``), ``X-CM-ID``, and
``X-HIP-ID`` / ``X-HIU-ID`` on the calls that name the facility. A callback answers the call whose
``REQUEST-ID`` it carries in ``response.requestId``.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from authlib.jose import JsonWebKey, JsonWebToken
from authlib.jose.errors import JoseError

from interfaces.abdm.settings import AbdmSettings

SESSIONS = "/gateway/v3/sessions"
CERTS = "/gateway/v3/certs"
# The gateway says a session has expired with this code in a 400/401 body (care_abdm re-authenticates on it).
EXPIRED_SESSION_CODE = "900901"


def timestamp(at: datetime | None = None) -> str:
    at = at or datetime.now(UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


class GatewayError(RuntimeError):
    """The gateway refused or could not be reached; the outbox retries."""


class Gateway:
    """Our client of the gateway: one per server, shared by the outbox handler's threads."""

    def __init__(self, settings: AbdmSettings, client: httpx.Client | None = None) -> None:
        if not settings.gateway_url:
            raise ValueError("FHIR_ABDM_GATEWAY_URL is not set")
        self.settings = settings
        self.base = settings.gateway_url.rstrip("/")
        self.http = client or httpx.Client(timeout=settings.http_timeout_seconds)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0  # time.monotonic() at which the token stops being used
        self.sessions_opened = 0  # how many times we asked for a token (tests, metrics)

    def token(self, *, renew: bool = False) -> str:
        with self._lock:
            if renew or self._token is None or time.monotonic() >= self._expires:
                self._open_session()
            assert self._token is not None
            return self._token

    def _open_session(self) -> None:
        body = {"clientId": self.settings.client_id,
                "clientSecret": self.settings.client_secret.get_secret_value(),
                "grantType": "client_credentials"}
        try:
            resp = self.http.post(self.base + SESSIONS, json=body, headers=self._plain_headers())
        except httpx.HTTPError as exc:
            raise GatewayError(f"the gateway session could not be opened: {type(exc).__name__}") from None
        if resp.status_code >= 300:
            raise GatewayError(f"the gateway refused our credentials ({resp.status_code})")
        data = resp.json()
        token, expires_in = data.get("accessToken"), data.get("expiresIn", 1200)
        if not isinstance(token, str) or not isinstance(expires_in, int | float):
            raise GatewayError("the gateway's session answer has no accessToken")
        # Renew before expiry: a call never leaves with a token about to lapse in transit.
        margin = min(self.settings.token_refresh_margin_seconds, float(expires_in) / 4)
        self._token, self._expires = token, time.monotonic() + float(expires_in) - margin
        self.sessions_opened += 1

    def _plain_headers(self, request_id: str | None = None) -> dict[str, str]:
        return {"Content-Type": "application/json", "REQUEST-ID": request_id or str(uuid.uuid4()),
                "TIMESTAMP": timestamp(), "X-CM-ID": self.settings.cm_id}

    def headers(self, request_id: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self._plain_headers(request_id), "Authorization": f"Bearer {self.token()}", **(extra or {})}

    def post(self, path: str, body: dict[str, Any], *, request_id: str | None = None,
             extra: dict[str, str] | None = None) -> httpx.Response:
        """POST to the gateway; a 2xx is success (the gateway answers 202), anything else raises."""
        for attempt in (1, 2):
            try:
                resp = self.http.post(self.base + path, json=body, headers=self.headers(request_id, extra))
            except httpx.HTTPError as exc:
                raise GatewayError(f"POST {path}: {type(exc).__name__}") from None
            if resp.status_code in (400, 401) and attempt == 1 and \
                    (resp.status_code == 401 or EXPIRED_SESSION_CODE in resp.text):
                self.token(renew=True)  # the gateway dropped our session early: one fresh token, once
                continue
            if resp.status_code >= 300:
                raise GatewayError(f"POST {path} answered {resp.status_code}")
            return resp
        raise AssertionError("unreachable")


class GatewayTokenVerifier:
    """Checks the bearer token on calls the gateway makes to us: an RS256 JWT signed by a key of the
    gateway's JWKS ({gateway}/gateway/v3/certs, cached; refetched once for an unknown key id)."""

    def __init__(self, settings: AbdmSettings, client: httpx.Client | None = None, cache_seconds: float = 300) -> None:
        self.url = (settings.gateway_url or "").rstrip("/") + CERTS
        # The audience the gateway's tokens carry (care_abdm ``authentication.py`` checks "account"): a token
        # the gateway's key signed for another audience is not a call meant for us.
        self.claims_options = {"aud": {"essential": True, "values": [settings.gateway_audience]}} \
            if settings.gateway_audience else {}
        self.http = client or httpx.Client(timeout=settings.http_timeout_seconds)
        self.cache_seconds = cache_seconds
        self._keys: Any = None
        self._fetched = 0.0
        self._lock = threading.Lock()
        self.jwt = JsonWebToken(["RS256"])

    def public_keys(self) -> list[Any]:
        """The gateway's public keys as ``cryptography`` keys (the consent manager signs artefacts with its
        key; refetched when none verifies, as for an unknown key id)."""
        try:
            return [k.get_public_key() for k in self._key_set(False).keys]
        except (httpx.HTTPError, ValueError):
            return []

    def refreshed_public_keys(self) -> list[Any]:
        try:
            return [k.get_public_key() for k in self._key_set(True).keys]
        except (httpx.HTTPError, ValueError):
            return []

    def _key_set(self, refresh: bool) -> Any:
        with self._lock:
            if refresh or self._keys is None or time.monotonic() - self._fetched > self.cache_seconds:
                resp = self.http.get(self.url)
                resp.raise_for_status()
                self._keys = JsonWebKey.import_key_set(resp.json())
                self._fetched = time.monotonic()
            return self._keys

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """The token's claims; raises PermissionError when there is no valid gateway token."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise PermissionError("a gateway bearer token is required")
        token = authorization[7:].strip()
        for refresh in (False, True):
            try:
                claims = self.jwt.decode(token, self._key_set(refresh), claims_options=self.claims_options)
                claims.validate(leeway=30)
                return dict(claims)
            except JoseError as exc:
                if refresh or ("kid" not in str(exc).lower() and "key" not in str(exc).lower()):
                    raise PermissionError(f"the gateway token is not valid: {exc.description or exc.error}") from None
            except (httpx.HTTPError, ValueError):
                raise PermissionError("the gateway's keys could not be fetched") from None
        raise PermissionError("the gateway token is not valid")
