"""One message through the adapter: decode -> store and commit -> map -> one FHIR transaction -> ACK.

Blocking code (the listener runs it in an executor). Two steps, so that enhanced acknowledgement mode can
send its accept ACK as soon as the raw message is committed:
``accept(raw)``  decodes MSH, stores the message (committed), and answers duplicates and rejections at once
(accept.py);
``process(acc)`` maps and applies the message, records the outcome (committed) and returns the ACK
(process.py).
An ACK never leaves before the row that records it is committed, so a re-sent message always finds the
ACK that was actually sent.
"""

from __future__ import annotations

from collections.abc import Sequence

from fhir_server.config import Settings
from fhir_server.rest.server import FhirServer
from interfaces.mllp.accept import (
    REUSED_MARK,
    REUSED_WARNING,
    Accepted,
    Acceptor,
    _byte_errors,
    reused_control_id,
    same_content,
)
from interfaces.mllp.inflight import InFlight
from interfaces.mllp.merges import frontdesk_on
from interfaces.mllp.process import Finished, Prepared, Processor, inbound_access, record_outcome
from interfaces.mllp.result_match import ServerOrders
from interfaces.mllp.store import MessageStore
from mappings.hl7v2.errors import ErrorDetail
from mappings.hl7v2.mapper import V2Mapper
from mappings.hl7v2.message import decode

__all__ = ["REUSED_MARK", "REUSED_WARNING", "Accepted", "Finished", "Hl7Pipeline", "Prepared", "inbound_access",
           "record_outcome", "reused_control_id", "same_content"]

# How long a re-sent copy waits for the first copy, still in flight, to finish before it is told so.
INFLIGHT_WAIT_SECONDS = 60.0


class Hl7Pipeline(Acceptor, Processor):
    def __init__(self, server: FhirServer, store: MessageStore, mapper: V2Mapper | None = None,
                 settings: Settings | None = None) -> None:
        self.server = server
        self.store = store
        settings = settings or server.settings
        self.reused_control_id = settings.hl7_reused_control_id
        self.legacy_versions = settings.hl7_legacy_versions  # 2.1/2.2 read as 2.3 (header.py)
        self.mapper = mapper or V2Mapper(identifier_systems=settings.hl7_identifier_systems,
                                         default_tz=settings.hl7_default_timezone,
                                         facility_authorities=settings.hl7_facility_authorities,
                                         resolver=ServerOrders(server))
        self.inflight = InFlight()
        self.frontdesk = frontdesk_on(settings.workflows)  # merges follow the front desk's rules (merges.py)
        self.inflight_wait = INFLIGHT_WAIT_SECONDS

    def handle(self, raw: bytes) -> list[str]:
        """Both steps at once (tests, replay): every ACK this message produces."""
        return self.handle_text(decode(raw), _byte_errors(raw))

    def handle_text(self, text: str, errors: Sequence[ErrorDetail] = ()) -> list[str]:
        acc = self.accept_text(text, errors=errors)
        if acc.original is not None:  # a copy of a message in flight: wait for it, answer with its outcome
            acc = self.wait_for_original(acc, text)
            if acc.original is not None:
                return [self.still_in_flight(acc)]
        acks = list(acc.immediate)
        if acc.to_process:
            ack = self.process(acc)
            if ack:
                acks.append(ack)
        return acks
