"""Step 2 of a message through the adapter (pipeline.py): map it, apply it as one FHIR transaction with its
outcome recorded in that same transaction, and return the application ACK. An ACK never leaves before the
row that records it is committed, so a re-sent message always finds the ACK that was actually sent."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fhir_server.errors import CONFLICT, FhirError
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import SystemAccess, as_system
from fhir_server.storage.repository import Repository
from interfaces.mllp.accept import REUSED_MARK, REUSED_WARNING, Accepted, _wants
from interfaces.mllp.ack import build_ack
from interfaces.mllp.inflight import InFlight
from interfaces.mllp.merges import AfterWrite, plan_merge
from interfaces.mllp.store import (
    ACK_SEPARATOR,
    ERROR,
    PROCESSED,
    RECEIVED,
    REJECTED,
    MessageStore,
    StoredMessage,
    finish_statement,
)
from mappings.hl7v2.errors import APPLICATION_INTERNAL_ERROR, ErrorDetail, MappingError, RejectedMessage
from mappings.hl7v2.header import Header, read_header, version_warnings
from mappings.hl7v2.mapper import V2Mapper
from mappings.hl7v2.message import MessageError, parse

log = logging.getLogger(__name__)

_ENTRY = re.compile(r"Bundle\.entry\[(\d+)\]")


@dataclass
class Prepared:
    """A mapped message, ready to apply: its transaction Bundle and the ACKs that success commits."""

    acc: Accepted
    bundle: dict[str, Any]
    sources: list[tuple[str, int]]  # (segment, occurrence) each entry came from, for ERR on failure
    ack: str | None  # the application ACK to send on success (None: the sender wants none)
    ok_acks: str | None  # every ACK of the message on success, as stored
    after: AfterWrite | None = None  # a step inside the message's transaction (a front-desk merge, merges.py)
    warnings: list[ErrorDetail] = field(default_factory=list)  # what was not mapped (ERR severity W in the AA)


@dataclass
class Finished:
    """A message whose outcome is already recorded (it could not be mapped): the ACK to send."""

    ack: str | None


def record_outcome(repo: Repository, p: Prepared, responses: Sequence[FhirResponse | None]) -> bool:
    """Inside the transaction applying ``p``: mark it processed with what it wrote. False when another copy
    of the message recorded an outcome first (the caller must then roll back)."""
    assert p.acc.stored is not None
    resources = [ref for r in responses if r is not None if (ref := _reference(r.headers.get("Location", "")))]
    # A processed message keeps a warning where an error would be (`hl7 stats` counts them).
    notes = [REUSED_WARNING] if REUSED_MARK in (p.acc.stored.control_id or "") else []
    warning = "; ".join([*notes, *(f"warning: {w.describe()}" for w in p.warnings)])[:2000] or None
    return bool(repo.execute(finish_statement(p.acc.stored.pk, status=PROCESSED, ack=p.ok_acks, resources=resources,
                                              error=warning, expect_attempts=p.acc.stored.attempts)).rowcount)


def inbound_access(*headers: Header | None) -> SystemAccess:
    """auth: a message the listener accepted is written by the server itself, for its senders (MSH-3|MSH-4);
    who may send at all is the listener's configuration (addresses, TLS client certificates), not a token."""
    senders = ", ".join(sorted({h.sender for h in headers if h is not None}))
    return as_system(f"HL7 v2 inbound from {senders}")


class Processor:
    """The process half of ``Hl7Pipeline`` (pipeline.py builds both halves over one server and store)."""

    server: FhirServer
    store: MessageStore
    mapper: V2Mapper
    inflight: InFlight
    frontdesk: bool
    legacy_versions: bool

    def process(self, acc: Accepted) -> str | None:
        """Map and apply the message, commit its outcome, return the application ACK to send (if any)."""
        try:
            return self._process(acc)
        finally:
            self.release(acc)

    def release(self, acc: Accepted) -> None:
        """Give up this copy's in-flight claim (``process`` does; the listener too if it never got there)."""
        if acc.claimed is not None:
            self.inflight.release(acc.claimed)
            acc.claimed = None

    def _process(self, acc: Accepted) -> str | None:
        prepared = self.prepare(acc)
        return prepared.ack if isinstance(prepared, Finished) else self.apply(prepared)

    def prepare(self, acc: Accepted) -> Prepared | Finished:
        """Map the message; one that cannot be mapped gets its outcome recorded (committed) here."""
        assert acc.stored is not None and acc.header is not None and acc.msg is not None
        header, msg, stored = acc.header, acc.msg, acc.stored
        sent = acc.immediate if header.enhanced else []
        if acc.errors:
            return Finished(self._fail(acc, ERROR, "AE", acc.errors))
        try:
            result = self.mapper.map(msg, header, stored.received_at, stored.control_id)  # key it is stored under
        except MappingError as exc:
            return Finished(self._fail(acc, ERROR, "AE", exc.details))
        except RejectedMessage as exc:
            return Finished(self._fail(acc, REJECTED, "AR", [exc.detail]))
        except Exception:  # a bug must not lose the message: it stays stored for replay
            log.exception("hl7 message %s failed while mapping", stored.pk)
            return Finished(self._internal_error(acc))
        warnings = [*version_warnings(header), *result.warnings]
        ok_ack = build_ack(header, "AA", warnings, enc=msg.enc)
        send_ok = not header.enhanced or _wants(header.application_ack, True)
        ok_acks = ACK_SEPARATOR.join([*sent, ok_ack] if send_ok else sent) or None
        bundle, sources, after = plan_merge(header, result.bundle, result.sources) if self.frontdesk \
            else (result.bundle, result.sources, None)
        return Prepared(acc, bundle, sources, ok_ack if send_ok else None, ok_acks, after, warnings)

    def apply(self, p: Prepared) -> str | None:
        """Apply one mapped message as its own FHIR transaction, outcome included; the ACK to send."""
        assert p.acc.stored is not None and p.acc.header is not None
        stored, header = p.acc.stored, p.acc.header
        superseded = False

        def record(repo: Repository, responses: list[FhirResponse | None]) -> None:
            # The outcome commits with the resources (one commit, nothing half-written); and only if no
            # other copy of the message recorded one since we read the row (then that one answers).
            nonlocal superseded
            if p.after is not None:
                p.after(repo, responses)
            if not record_outcome(repo, p, responses):
                superseded = True
                raise FhirError(409, CONFLICT, "Another copy of this HL7 message was processed first")

        try:
            response = self.server.handle(FhirRequest("POST", "", headers={"content-type": "application/fhir+json"},
                                                      resource=p.bundle, in_transaction=record,
                                                      access=inbound_access(header)))
        except Exception:
            log.exception("hl7 message %s failed while applying", stored.pk)
            return self._internal_error(p.acc)
        if superseded:
            return self._answer_of(stored.pk, header)
        if response.status < 400:
            return p.ack
        return self._fail(p.acc, ERROR, "AE", [self._transaction_error(response.resource, p.sources)])

    def _internal_error(self, acc: Accepted) -> str | None:
        detail = ErrorDetail(APPLICATION_INTERNAL_ERROR, "Internal error while processing the message")
        return self._fail(acc, ERROR, "AE", [detail])

    def _fail(self, acc: Accepted, status: str, code: str, details: list[ErrorDetail]) -> str | None:
        """Record a failed outcome (committed) and return the ACK saying so, if the sender wants one."""
        assert acc.stored is not None and acc.header is not None and acc.msg is not None
        header, stored = acc.header, acc.stored
        sent = acc.immediate if header.enhanced else []
        error = "; ".join(d.describe() for d in details) or None
        app_ack = build_ack(header, code, details, enc=acc.msg.enc)
        send = not header.enhanced or _wants(header.application_ack, status == PROCESSED)
        acks = [*sent, app_ack] if send else sent
        if not self.store.finish(stored.pk, status=status, ack=ACK_SEPARATOR.join(acks) or None, error=error,
                                 expect_attempts=stored.attempts):
            return self._answer_of(stored.pk, header)
        return app_ack if send else None

    def _answer_of(self, pk: int, header: Header) -> str | None:
        """The application ACK another copy of this message committed (what this copy answers too)."""
        row = self.store.get(pk)
        acks = row.acks if row is not None else []
        if header.enhanced:
            return acks[1] if len(acks) > 1 else None
        return acks[-1] if acks else None

    def _transaction_error(self, body: Any, sources: list[tuple[str, int]]) -> ErrorDetail:
        issues = body.get("issue", []) if isinstance(body, dict) else []
        text = "; ".join(str(i.get("diagnostics", "")) for i in issues)[:500] or "The FHIR transaction failed"
        for issue in issues:
            for expr in [*issue.get("expression", []), str(issue.get("diagnostics", ""))]:
                m = _ENTRY.search(expr)
                if m and int(m.group(1)) < len(sources):
                    seg, occurrence = sources[int(m.group(1))]
                    return ErrorDetail(APPLICATION_INTERNAL_ERROR, text, seg, occurrence)
        return ErrorDetail(APPLICATION_INTERNAL_ERROR, text)

    # -- replay ----------------------------------------------------------------------------------------
    def replay(self, status: str = ERROR, limit: int = 1000) -> dict[str, int]:
        """Re-run stored messages of ``status`` (after a fix); each keeps its row and gets a new outcome."""
        outcome: dict[str, int] = {}
        last = 0
        while True:
            rows = self.store.with_status(status, limit=min(limit, 500), after_pk=last)
            if not rows:
                return outcome
            for row in rows:
                last = row.pk
                new_status = self.reprocess(row)
                outcome[new_status] = outcome.get(new_status, 0) + 1
                limit -= 1
                if limit <= 0:
                    return outcome

    def reprocess(self, row: StoredMessage) -> str:
        try:
            msg = parse(row.raw)
        except MessageError:
            return row.status
        header = read_header(msg)
        if not header.version_supported(self.legacy_versions):  # still not something we take: it stays as it was
            return row.status
        original = Header(**{**header.__dict__, "accept_ack": "NE", "application_ack": "AL"}) \
            if header.enhanced else header
        # Keep the accept ACK that was sent (enhanced mode); the application ACK is replaced.
        acc = Accepted(row.acks[:1] if header.enhanced else [], row, original, msg, to_process=True)
        self.process(acc)
        updated = self.store.get(row.pk)
        return updated.status if updated else RECEIVED


def _reference(location: str) -> str | None:
    """"Type/id" from a write's Location (``[base/]Type/id/_history/n``)."""
    parts = location.split("/")
    if len(parts) < 2:
        return None
    idx = parts.index("_history") if "_history" in parts else len(parts)
    return "/".join(parts[max(0, idx - 2):idx]) or None
