"""Callbacks in: checked, then applied to the anchor's cycle, once.

Our HTTP endpoint answers 202 with the protocol acknowledgement at once and queues the body (outbox topic
``hcx-inbound``, in its own transaction), so nothing acknowledged is lost. Here, off the request: decrypt
(ERR_INVALID_ENCRYPTION), check the headers (addressed to us, timestamp in range, correlation id known,
sender the payer the cycle is with -- or the gateway itself for its error callbacks --, an on_* only on an
open cycle, api_call_id not seen before on the cycle), then apply the message as the system acting for
that claim. A refusal is final (an AuditEvent says why); a duplicate changes nothing.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from fhir_server.config import Settings
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository
from interfaces.claims import protocol as p
from interfaces.claims.apply import Applier
from interfaces.claims.envelope import EnvelopeError, protected_header
from interfaces.claims.exchange import audit, cycle_of, find_anchor, with_cycle
from interfaces.claims.gateway import ClaimsGateway
from interfaces.claims.tables import API_CALL

log = logging.getLogger(__name__)

TOPIC = "hcx-inbound"


class Refusal(Exception):
    def __init__(self, code: str, message: str, anchor: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.anchor = anchor


class CallbackReceiver:
    """The outbox handler for TOPIC: one received message, ``{"path", "body"}``."""

    def __init__(self, server: FhirServer, gateway: ClaimsGateway, settings: Settings) -> None:
        self.server = server
        self.gateway = gateway
        self.settings = settings
        self.gateway_code = settings.claims_gateway_code
        self.max_age = timedelta(hours=settings.claims_timestamp_range_hours)
        self.applier = Applier(settings)

    def __call__(self, key: str, payload: dict[str, Any]) -> None:
        path, body = str(payload["path"]), payload["body"]
        headers: dict[str, Any] = {}
        try:
            try:
                headers, bundle = self.gateway.open(body)
            except EnvelopeError as exc:
                with suppress(EnvelopeError):  # which message it was, for the audit trail (ids only)
                    headers = protected_header(str(body.get("payload")))
                raise Refusal(exc.code, str(exc)) from exc
            self._check(path, headers, bundle)
            found = self._anchor(str(headers[p.CORRELATION_ID]))
            self._apply(path, headers, bundle, *found)
        except (Refusal, p.ProtocolError) as exc:
            anchor = exc.anchor if isinstance(exc, Refusal) else None
            self._refused(path, headers, exc.code, str(exc), anchor)

    def _check(self, path: str, headers: dict[str, Any], bundle: dict[str, Any] | None) -> None:
        callback = path.rsplit("/", 1)[-1].startswith("on_") or path == p.ERROR_RESPONSE
        p.check_headers(headers, callback=callback)
        if headers[p.RECIPIENT] != self.gateway.participant_code:
            raise Refusal(p.ERR_INVALID_RECIPIENT, "the message is addressed to another participant")
        p.check_timestamp(headers[p.TIMESTAMP], self.max_age)
        if bundle is None and headers.get(p.STATUS) not in (p.ERROR, p.REDIRECT):
            raise Refusal(p.ERR_INVALID_PAYLOAD, "only errors and redirects may come without an encrypted payload")

    def _anchor(self, correlation_id: str) -> tuple[str, str]:
        found = self.server.uow.run(lambda repo: find_anchor(repo, correlation_id), write=False,
                                    access=as_system("HCX callback: which claim a correlation id belongs to"))
        if found is None:
            raise Refusal(p.ERR_INVALID_CORRELATION_ID, "no exchange of ours has this correlation id")
        return found

    def _apply(self, path: str, headers: dict[str, Any], bundle: dict[str, Any] | None, rtype: str,
               rid: str) -> None:
        anchor = f"{rtype}/{rid}"
        reason = f"HCX callback for {anchor}"

        def work(repo: Repository) -> None:
            current = repo.current(rtype, rid, for_update=True)  # callbacks of one claim, one at a time
            content = current.content if current is not None and not current.deleted else None
            cycle = cycle_of(content, str(headers[p.CORRELATION_ID])) if content else None
            if content is None or cycle is None:
                raise Refusal(p.ERR_INVALID_CORRELATION_ID, "the exchange is gone", anchor)
            call = str(headers[p.API_CALL_ID])
            if call in cycle.api_calls:
                log.info("HCX duplicate %s on %s ignored", path, anchor)
                return  # a duplicate: the first one was applied, this changes nothing
            if repo.execute(select(API_CALL.c.api_call_id).where(API_CALL.c.api_call_id == call)).first():
                raise Refusal(p.ERR_INVALID_API_CALL_ID, "this api_call_id was used before, on another exchange",
                              anchor)
            sender = headers[p.SENDER]
            if sender != cycle.payer and not (sender == self.gateway_code and headers.get(p.STATUS) == p.ERROR):
                raise Refusal(p.ERR_INVALID_SENDER, f"{sender} is not the participant this exchange is with", anchor)
            if (path.rsplit("/", 1)[-1].startswith("on_") or path == p.ERROR_RESPONSE) and not cycle.open:
                raise Refusal(p.ERR_INVALID_CORRELATION_ID, "the exchange is already closed", anchor)
            cycle.api_calls.append(call)
            # The primary key holds it unique across exchanges (and concurrent writers: the loser retries, then
            # finds it above).
            repo.execute(insert(API_CALL).values(api_call_id=call, correlation_id=cycle.correlation_id,
                                                 path=path[:64], received=datetime.now(UTC)))
            content = self.applier.apply(repo, path, headers, bundle, rtype, rid, content, cycle)
            repo.update(rtype, rid, with_cycle(content, cycle))
            audit(repo, anchor, path, inbound=True, participant=sender, correlation_id=cycle.correlation_id,
                  api_call_id=str(headers[p.API_CALL_ID]), patient=(content.get("patient") or {}).get("reference"),
                  error=cycle.error if headers.get(p.STATUS) == p.ERROR else None, reason=reason)

        self.server.uow.run(work, write=True, access=as_system(reason))

    def _refused(self, path: str, headers: dict[str, Any], code: str, message: str, anchor: str | None) -> None:
        log.warning("HCX callback %s refused: %s", path, code)  # codes only: no PII, no payload in logs

        def work(repo: Repository) -> None:
            audit(repo, anchor or "", path, inbound=True, participant=str(headers.get(p.SENDER) or "") or None,
                  status=400, error=f"{code}: {message}", correlation_id=headers.get(p.CORRELATION_ID),
                  api_call_id=headers.get(p.API_CALL_ID), reason="HCX callback refused")

        self.server.uow.run(work, write=True, access=as_system("HCX callback refused: recording why"))
