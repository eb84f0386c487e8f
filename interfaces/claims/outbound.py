"""Protocol messages out, only through the outbox: enqueued in the transaction that decided to send them
(a $submit, a callback that asks for a redirect or an acknowledgement), delivered by the dispatcher with
retries and backoff, dead-lettered after ``FHIR_CLAIMS_MAX_ATTEMPTS`` (``outbox retry`` sends it again).

The api_call_id is fixed per outbox row: a retry after a lost acknowledgement is refused by the gateway as
ERR_INVALID_API_CALL_ID, which therefore means "delivered before" here.
"""

from __future__ import annotations

import logging
from typing import Any

from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from fhir_server.storage.outbox import count_attempt, last_attempt
from fhir_server.storage.repository import Repository
from interfaces.claims import protocol as p
from interfaces.claims.exchange import audit, cycle_of, with_cycle
from interfaces.claims.gateway import ClaimsGateway, Outgoing, Refused

log = logging.getLogger(__name__)

TOPIC = "hcx-request"


def enqueue(repo: Repository, anchor: str, message: Outgoing, *, max_attempts: int, patient: str | None) -> None:
    """Put ``message`` (about ``anchor``, e.g. Claim/7) in the outbox, in ``repo``'s transaction."""
    repo.enqueue(TOPIC, f"{message.correlation_id}:{message.api_call_id}", {
        "anchor": anchor, "patient": patient, "action": message.action, "recipient": message.recipient,
        "correlation_id": message.correlation_id, "api_call_id": message.api_call_id,
        "workflow_id": message.workflow_id, "status": message.status, "extra": message.extra,
        "bundle": message.bundle}, max_attempts=max_attempts)


class RequestSender:
    """The outbox handler for TOPIC."""

    def __init__(self, server: FhirServer, gateway: ClaimsGateway) -> None:
        self.server = server
        self.gateway = gateway

    def __call__(self, key: str, payload: dict[str, Any]) -> None:
        message = Outgoing(payload["action"], payload["recipient"], payload["correlation_id"],
                           payload["api_call_id"], payload["bundle"], payload.get("workflow_id"),
                           payload.get("status"), payload.get("extra") or {})
        error: str | None = None
        answer: dict[str, Any] | None = None
        try:
            count_attempt()  # the outbox counts this attempt as it leaves (last_attempt() knows it)
            ack = self.gateway.send(message)  # anything but Refused propagates: the dispatcher retries
            if ack.get("resourceType"):  # a FHIR payer answers at once (HCX answers later, on our callbacks)
                answer = ack
        except Refused as exc:
            if exc.code == p.ERR_INVALID_API_CALL_ID:
                log.info("HCX %s %s was delivered before", message.action, key)
                return
            error = str(exc)
        except Exception as exc:
            if last_attempt():  # about to be dead-lettered: say so on the claim, still retryable
                self._record(payload, None, undelivered=f"{p.ERR_SERVICE_UNAVAILABLE}: {exc}"[:300])
            raise
        self._record(payload, error, answer=answer)


    def _record(self, payload: dict[str, Any], error: str | None, *, undelivered: str | None = None,
                answer: dict[str, Any] | None = None) -> None:
        anchor: str = payload["anchor"]
        rtype, rid = anchor.split("/", 1)

        def work(repo: Repository) -> None:
            current = repo.current(rtype, rid, for_update=True)
            content = current.content if current is not None and not current.deleted else None
            cycle = cycle_of(content, payload["correlation_id"]) if content else None
            # A status request (/hcx/status) asks about the cycle; its fate does not change the cycle's.
            is_request = not payload["action"].rsplit("/", 1)[-1].startswith("on_") \
                and payload["action"] != p.STATUS_REQUEST
            if content is not None and cycle is not None and is_request:
                changed = True
                if error:  # refused for good: the cycle ends here, with the gateway's reason
                    cycle.status, cycle.error = "error", error
                elif undelivered and cycle.status == "queued":  # dead letter: `outbox retry` may still send it
                    cycle.status, cycle.error = "undelivered", undelivered
                elif not undelivered and cycle.status in ("queued", "undelivered"):  # never over a later status
                    cycle.status, cycle.error = "sent", None
                else:
                    changed = False
                if answer is not None and cycle.open:  # a FHIR payer's synchronous answer
                    from interfaces.claims.fhir_payer import apply_answer
                    from interfaces.claims.payers import Payers

                    assert isinstance(self.gateway, Payers)
                    content = apply_answer(self.server, self.gateway.fhir, repo, (rtype, rid), content, cycle,
                                           answer, polls=0, patient=payload.get("patient"))
                    changed = True
                if changed:
                    repo.update(rtype, rid, with_cycle(content, cycle))
            audit(repo, anchor, payload["action"], inbound=False, participant=payload["recipient"],
                  error=error or undelivered or (cycle.error if cycle is not None and answer is not None else None),
                  status=503 if undelivered else 200,
                  correlation_id=payload["correlation_id"], api_call_id=payload["api_call_id"],
                  patient=payload.get("patient"), reason=f"HCX request for {anchor}")

        self.server.uow.run(work, write=True, access=as_system(f"HCX request for {anchor}"))
