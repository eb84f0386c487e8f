"""``ClaimsGateway``: how a protocol message leaves. ``HcxGateway`` speaks HCX 0.9 / NHCX to a gateway.

A send either succeeds (the gateway acknowledged with 202), is refused for good (``Refused``: a 4xx with a
protocol error code -- the message itself is wrong, retrying cannot help), or raises (gateway down, 5xx,
timeout, 401 after a token refresh): the outbox retries it with backoff and dead-letters it in the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from fhir_server.config import Settings
from interfaces.claims import envelope
from interfaces.claims import protocol as p
from interfaces.claims.registry import ParticipantRegistry
from interfaces.claims.token import ParticipantToken


@dataclass
class Outgoing:
    action: str  # e.g. /claim/submit, /communication/on_request
    recipient: str  # participant code
    correlation_id: str
    api_call_id: str
    bundle: dict[str, Any]
    workflow_id: str | None = None
    status: str | None = None  # x-hcx-status (mandatory on on_* answers)
    extra: dict[str, Any] = field(default_factory=dict)  # domain headers, NHCX x-hcx-ben-abha-id


class Refused(Exception):
    """The gateway refused the message for good (a protocol error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ClaimsGateway(Protocol):
    participant_code: str

    def send(self, message: Outgoing) -> dict[str, Any]:
        """Deliver; returns the acknowledgement. Raises Refused (final) or anything else (retry)."""
        ...

    def open(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(protocol headers, bundle or None) of a received message body."""
        ...


def pem_text(value: str) -> str:
    """PEM given inline, or the path of a PEM file."""
    return value if value.lstrip().startswith("-----BEGIN") else Path(value).read_text()


class HcxGateway:
    def __init__(self, settings: Settings) -> None:
        if not (settings.claims_gateway_url and settings.claims_participant_code and settings.claims_private_key):
            raise ValueError("claims need FHIR_CLAIMS_GATEWAY_URL, FHIR_CLAIMS_PARTICIPANT_CODE and "
                             "FHIR_CLAIMS_PRIVATE_KEY")
        self.flavour = settings.claims_flavour
        self.base_url = settings.claims_gateway_url.rstrip("/")
        self.participant_code = settings.claims_participant_code
        self.gateway_code = settings.claims_gateway_code
        self.key: RSAPrivateKey = envelope.private_key(pem_text(settings.claims_private_key))
        secret = settings.claims_secret.get_secret_value() if settings.claims_secret else ""
        self.token = ParticipantToken(self.flavour, settings.claims_token_url
                                      or f"{self.base_url}/participant/auth/token/generate",
                                      self.participant_code, settings.claims_username or "", secret)
        self.registry = ParticipantRegistry(settings.claims_registry_url or self.base_url, self.token, self.flavour,
                                            ttl=settings.claims_registry_ttl_seconds)
        self.timeout = 30.0

    def headers(self, message: Outgoing) -> dict[str, Any]:
        headers: dict[str, Any] = {p.SENDER: self.participant_code, p.RECIPIENT: message.recipient,
                                   p.API_CALL_ID: message.api_call_id, p.CORRELATION_ID: message.correlation_id,
                                   p.TIMESTAMP: p.timestamp()}
        if message.workflow_id:
            headers[p.WORKFLOW_ID] = message.workflow_id
        if message.status:
            headers[p.STATUS] = message.status
        elif self.flavour == "nhcx":
            headers[p.STATUS] = "request.initiated"  # what NHCX integrations send on requests
        headers.update(message.extra)
        return headers

    def send(self, message: Outgoing) -> dict[str, Any]:
        try:
            recipient = self.registry.get(message.recipient)
        except p.ProtocolError as exc:
            raise Refused(exc.code, str(exc)) from exc
        if not recipient.active:
            raise Refused(p.ERR_INVALID_RECIPIENT, f"participant {message.recipient} is not active")
        payload = envelope.encrypt(self.headers(message), message.bundle, recipient.key())
        bearer = self.token()
        auth = {"Authorization": f"Bearer {bearer}"}
        if self.flavour == "nhcx":
            auth["bearer_auth"] = bearer  # care_nhcx sends both [UNCONFIRMED which NHCX requires]
        resp = httpx.post(f"{self.base_url}{message.action}", json={"payload": payload}, headers=auth,
                          timeout=self.timeout)
        if resp.status_code == 401:
            self.token.invalidate()
            raise ConnectionError("the gateway refused our token (401); a new one is fetched for the retry")
        if resp.status_code >= 500 or resp.status_code == 429:
            raise ConnectionError(f"the gateway answered {resp.status_code}")
        try:
            ack = resp.json()
        except ValueError:
            ack = {}
        if resp.status_code >= 400:
            error = ack.get("error") if isinstance(ack, dict) else None
            code = p.SAME_ERRORS.get(str((error or {}).get("code")), str((error or {}).get("code") or resp.status_code))
            raise Refused(code, str((error or {}).get("message") or f"HTTP {resp.status_code}"))
        return ack if isinstance(ack, dict) else {}

    def open(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        if "payload" in body:
            return envelope.decrypt_json(str(body["payload"]), self.key)
        headers = {k: v for k, v in body.items() if k.startswith("x-hcx-")}  # a plain ProtocolResponse
        return headers, None
