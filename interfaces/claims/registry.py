"""Participant registry look-ups: a participant's status, endpoint and encryption certificate, cached.

Swasth HCX 0.9 (``openapi_hcx_registry.yml``): ``POST {gateway}/participant/search`` with
``{"filters": {"participant_code": {"eq": code}}}`` answers ``{"participants": [...]}`` whose
``encryption_cert`` is a URL to a PEM certificate. NHCX: the same path with ``{"participant_code": code}``
answers one object, and ``encryption_cert`` is the PEM itself. Both are accepted whatever the flavour.
Entries (and fetched certificates) are kept ``ttl`` seconds, so a rotated certificate is picked up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from interfaces.claims.envelope import public_key
from interfaces.claims.protocol import ERR_INVALID_RECIPIENT, ProtocolError

PEM_START = "-----BEGIN"


@dataclass(frozen=True)
class Participant:
    code: str
    status: str
    endpoint_url: str | None
    encryption_cert: str  # PEM text (fetched when the registry gave a URL)
    roles: tuple[str, ...] = ()
    name: str | None = None

    @property
    def active(self) -> bool:
        return str(self.status).lower() in ("active", "1")  # NHCX: numeric status, 1 = active [UNCONFIRMED]

    def key(self) -> Any:
        return public_key(self.encryption_cert)


@dataclass
class ParticipantRegistry:
    base_url: str  # the gateway / registry base, e.g. https://staging-hcx.swasth.app/api/v0.8
    token: Callable[[], str] | None = None  # bearer for the registry (the participant token)
    flavour: str = "hcx"
    ttl: float = 3600.0
    timeout: float = 10.0
    _cache: dict[str, tuple[float, Participant]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, code: str) -> Participant:
        """The participant ``code``; ProtocolError(ERR_INVALID_RECIPIENT) when unknown or not active."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(code)
        if hit is not None and hit[0] > now:
            return hit[1]
        participant = self._fetch(code)
        with self._lock:
            self._cache[code] = (now + self.ttl, participant)
        return participant

    def forget(self, code: str) -> None:
        """Drop a cached entry (a recipient said it could not decrypt: its certificate may have rotated)."""
        with self._lock:
            self._cache.pop(code, None)

    def _headers(self) -> dict[str, str]:
        if self.token is None:
            return {}
        bearer = self.token()
        return {"Authorization": f"Bearer {bearer}", "bearer_auth": bearer} if self.flavour == "nhcx" \
            else {"Authorization": f"Bearer {bearer}"}

    def _fetch(self, code: str) -> Participant:
        body: dict[str, Any] = {"participant_code": code} if self.flavour == "nhcx" else \
            {"filters": {"participant_code": {"eq": code}}, "limit": 1, "offset": 0}
        with httpx.Client(timeout=self.timeout) as http:
            resp = http.post(f"{self.base_url.rstrip('/')}/participant/search", json=body, headers=self._headers())
            resp.raise_for_status()  # registry down: the caller's delivery is retried
            found = resp.json()
            entries = found.get("participants") if isinstance(found, dict) and "participants" in found else [found]
            entry = next((e for e in entries or [] if isinstance(e, dict) and e.get("participant_code") == code),
                         None)
            if entry is None:
                raise ProtocolError(ERR_INVALID_RECIPIENT, f"participant {code} is not in the registry")
            cert = str(entry.get("encryption_cert") or "")
            if cert.startswith(("http://", "https://")):
                fetched = http.get(cert)
                fetched.raise_for_status()
                cert = fetched.text
        if not cert.lstrip().startswith(PEM_START):
            raise ProtocolError(ERR_INVALID_RECIPIENT, f"participant {code} has no PEM encryption certificate")
        roles = entry.get("roles") or []
        return Participant(code, str(entry.get("status", "")), entry.get("endpoint_url"), cert,
                           tuple(str(r) for r in roles) if isinstance(roles, list) else (),
                           entry.get("participant_name"))
