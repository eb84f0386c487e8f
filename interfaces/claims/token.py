"""The participant's bearer token for the gateway, fetched once and refreshed before it expires.

Swasth HCX 0.8/0.9 (hcx-specs ``api-security.md``; hcx-platform token README): ``POST
{gateway}/participant/auth/token/generate``, form ``participant_code``, ``username``, ``secret`` -> a Keycloak
token response (``access_token``, ``expires_in``). NHCX reuses the ABDM gateway session (``POST
{session_url}`` with ``clientId``/``clientSecret``/``grantType`` and the REQUEST-ID, TIMESTAMP, X-CM-ID
headers -> ``accessToken``, ``expiresIn``).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx


@dataclass
class ParticipantToken:
    flavour: str  # hcx | nhcx
    url: str  # the token endpoint (Swasth) or the ABDM session endpoint (NHCX)
    participant_code: str
    username: str = ""  # Swasth: the participant user's primary e-mail; NHCX: the ABDM clientId
    secret: str = ""  # Swasth: the user's secret; NHCX: the ABDM clientSecret
    cm_id: str = "sbx"  # NHCX X-CM-ID: sbx (sandbox) or abdm (production)
    margin: float = 60.0  # refresh this many seconds before expiry
    timeout: float = 10.0
    fetched: int = 0  # how many tokens were fetched (tests, metrics)
    _token: str | None = None
    _expires: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires - self.margin:
                self._token, lifetime = self._fetch()
                self._expires = time.monotonic() + lifetime
                self.fetched += 1
            return self._token

    def invalidate(self) -> None:
        """The gateway answered 401: the next call fetches a new token."""
        with self._lock:
            self._token = None

    def _fetch(self) -> tuple[str, float]:
        with httpx.Client(timeout=self.timeout) as http:
            if self.flavour == "nhcx":
                resp = http.post(self.url, json={"clientId": self.username, "clientSecret": self.secret,
                                                 "grantType": "client_credentials"},
                                 headers={"REQUEST-ID": str(uuid.uuid4()), "X-CM-ID": self.cm_id,
                                          "TIMESTAMP": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")})
                resp.raise_for_status()
                data = resp.json()
                return str(data["accessToken"]), float(data.get("expiresIn") or 600)
            resp = http.post(self.url, data={"participant_code": self.participant_code, "username": self.username,
                                              "secret": self.secret})
            resp.raise_for_status()
            data = resp.json()
            return str(data["access_token"]), float(data.get("expires_in") or 600)
