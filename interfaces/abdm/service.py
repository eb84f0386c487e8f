"""The ABDM adapter of one server: its settings, gateway session, unit-of-work helper, audit, and the outbox
topic through which every call out leaves (gateway callbacks, data pushes, OTP messages, erasures).

Calls out never happen inside a request: a handler writes its state and enqueues the call in the same
transaction; the outbox dispatcher delivers it with retries and backoff, ``dead`` after ``max_attempts``
(fhir_server/storage/outbox.py). Deliveries are at least once, so every handler here is idempotent by its
key: a callback carries the REQUEST-ID it answers, a push the transaction id and page number.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from fhir_server.audit.events import Actor, Record
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository
from interfaces.abdm.gateway import Gateway, GatewayTokenVerifier
from interfaces.abdm.settings import AbdmSettings, settings_for

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.outbox import OutboxDispatcher

log = logging.getLogger(__name__)
T = TypeVar("T")

TOPIC = "abdm"
AUDIT_SYSTEM = "urn:fhir-server:abdm"
GATEWAY_ACTOR = "abdm-gateway"


class Abdm:
    def __init__(self, server: FhirServer, settings: AbdmSettings) -> None:
        self.server = server
        self.settings = settings
        self.gateway = Gateway(settings)
        self.gateway_keys = GatewayTokenVerifier(settings)
        self.verifier = self.gateway_keys if settings.verify_gateway_token else None
        self.http = httpx.Client(timeout=settings.http_timeout_seconds)

    # --- units of work ----------------------------------------------------------------------------------

    def run(self, reason: str, work: Callable[[Repository], T], *, write: bool = True) -> T:
        """One unit of work acting as the system, for ``reason`` (which names the consent or transaction)."""
        return self.server.uow.run(work, write=write, access=as_system(reason))

    def callback(self, repo: Repository, path: str, body: dict[str, Any], *, answering: str | None,
                 headers: dict[str, str] | None = None, key: str | None = None) -> str:
        """Enqueue a POST to the gateway (``answering``: the REQUEST-ID of the call this answers, which goes in
        ``response.requestId``); returns our REQUEST-ID, derived from the row's key, so a retried delivery is
        the same request to the gateway (and a callback answering it can be matched)."""
        if answering is not None:
            body = {**body, "response": {"requestId": answering}}
        key = f"callback:{path}:{key or answering or uuid.uuid4()}"
        request_id = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
        repo.enqueue(TOPIC, key, {"kind": "callback", "path": path, "body": body, "requestId": request_id,
                                  "headers": headers or {}})
        return request_id

    def enqueue(self, repo: Repository, kind: str, key: str, payload: dict[str, Any], *,
                not_before: datetime | None = None) -> None:
        repo.enqueue(TOPIC, f"{kind}:{key}", {"kind": kind, **payload}, not_before=not_before)

    def consent_signed(self, consent: dict[str, Any]) -> bool:
        """The consent manager's signature on an artefact (``{"consentDetail", "signature"}``) checks out (or
        the check is off)."""
        if not self.settings.verify_consent_signature:
            return True
        from interfaces.abdm.consent import signature_valid

        detail, signature = consent.get("consentDetail"), consent.get("signature")
        if not isinstance(detail, dict):
            return False
        return signature_valid(detail, signature, self.gateway_keys.public_keys()) or \
            signature_valid(detail, signature, self.gateway_keys.refreshed_public_keys())

    def hip_headers(self) -> dict[str, str]:
        return {"X-HIP-ID": self.settings.hip_id or ""}

    def hiu_headers(self) -> dict[str, str]:
        return {"X-HIU-ID": self.settings.hiu_id or ""}

    # --- audit ------------------------------------------------------------------------------------------

    def audit(self, repo: Repository, code: str, display: str, status: int, targets: list[str], *,
              action: str = "E", from_gateway: bool = True) -> None:
        """One AuditEvent for one exchange, in the exchange's own transaction, naming the Consent (and the
        patient) it was about."""
        if self.server.audit is None:
            return
        actor = Actor(client_id=f"{GATEWAY_ACTOR}:{self.settings.cm_id}") if from_gateway else Actor(internal=True)
        record = Record({"system": AUDIT_SYSTEM, "code": code, "display": display}, action, status, actor,
                        targets=[t for t in targets if t])
        self.server.audit.recorder.write_now(repo, record)

    # --- the outbox handler -----------------------------------------------------------------------------

    def deliver(self, key: str, payload: dict[str, Any]) -> None:
        kind = payload.get("kind")
        if kind == "callback":
            self.gateway.post(payload["path"], payload["body"], request_id=payload["requestId"],
                              extra=payload.get("headers") or {})
        elif kind == "otp":
            self._send_otp(payload)
        elif kind == "transfer":
            from interfaces.abdm.transfer import transfer

            transfer(self, payload)
        elif kind in HIU_KINDS:
            from interfaces.abdm import hiu

            hiu.deliver(self, kind, payload)
        else:
            log.warning("abdm outbox row %s has an unknown kind; dropped", key)

    def _send_otp(self, payload: dict[str, Any]) -> None:
        url = self.settings.otp_webhook_url
        if not url:
            raise RuntimeError("FHIR_ABDM_OTP_WEBHOOK_URL is not set: the link OTP cannot be sent")
        resp = self.http.post(url, json={"to": payload["to"], "message": payload["message"]})
        if resp.status_code >= 300:
            raise RuntimeError(f"the OTP webhook answered {resp.status_code}")


HIU_KINDS = ("hiu-fetch", "hiu-hi-request", "hiu-erase", "hiu-notify")

_INSTANCES: dict[int, Abdm] = {}


def abdm_for(server: FhirServer) -> Abdm | None:
    """The server's ABDM adapter, or None when ABDM is not configured."""
    found = _INSTANCES.get(id(server))
    if found is not None and found.server is server:
        return found
    settings = settings_for(server)
    if not settings.enabled:
        return None
    found = _INSTANCES[id(server)] = Abdm(server, settings)
    return found


def install(server: FhirServer, dispatcher: OutboxDispatcher) -> None:
    """Wire ABDM into a server when configured: the outbox topic, ABHA checks on Patient writes, and
    HIP-initiated linking of new visits."""
    abdm = abdm_for(server)
    if abdm is None:
        return
    dispatcher.register(TOPIC, abdm.deliver)
    from interfaces.abdm.hooks import install_hooks

    install_hooks(abdm)
