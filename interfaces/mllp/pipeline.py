"""One message through the adapter: decode -> store and commit -> map -> one FHIR transaction -> ACK.

Blocking code (the listener runs it in an executor). Two steps, so that enhanced acknowledgement mode can
send its accept ACK as soon as the raw message is committed:
``accept(raw)``  decodes MSH, stores the message (committed), and answers duplicates and rejections at once;
``process(acc)`` maps and applies the message, records the outcome (committed) and returns the ACK.
An ACK never leaves before the row that records it is committed, so a re-sent message always finds the
ACK that was actually sent.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fhir_server.config import Settings
from fhir_server.errors import CONFLICT, FhirError
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import SystemAccess, as_system
from fhir_server.storage.repository import Repository
from interfaces.mllp.ack import build_ack, wants
from interfaces.mllp.inflight import InFlight, Key
from interfaces.mllp.merges import AfterWrite, frontdesk_on, plan_merge
from interfaces.mllp.query import QUERY_EVENTS, QUERY_TYPES
from interfaces.mllp.query import responses as query_responses
from interfaces.mllp.result_match import ServerOrders
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
from mappings.hl7v2.errors import (
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    DUPLICATE_KEY_IDENTIFIER,
    REQUIRED_FIELD_MISSING,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_VERSION_ID,
    ErrorDetail,
    MappingError,
    RejectedMessage,
)
from mappings.hl7v2.header import LEGACY_VERSIONS, Header, read_header, version_warnings
from mappings.hl7v2.mapper import V2Mapper
from mappings.hl7v2.message import (
    Encoding,
    MessageError,
    V2Message,
    charset_error,
    decode,
    parse,
    parse_msh,
)

log = logging.getLogger(__name__)

_ENTRY = re.compile(r"Bundle\.entry\[(\d+)\]")
# How long a re-sent copy waits for the first copy, still in flight, to finish before it is told so.
INFLIGHT_WAIT_SECONDS = 60.0


@dataclass
class Accepted:
    """What ``accept`` decided: ACKs to send now, and whether ``process`` must still run."""

    immediate: list[str] = field(default_factory=list)
    stored: StoredMessage | None = None
    header: Header | None = None
    msg: V2Message | None = None
    to_process: bool = False
    claimed: Key | None = None  # the in-flight claim this copy holds; ``process`` releases it
    # Another copy of this message is in flight: wait for it (``wait_for_original``), then accept again.
    original: threading.Event | None = None
    # Found on the bytes before the text was stored (MSH-18 charset): the message gets AE, unmapped.
    errors: list[ErrorDetail] = field(default_factory=list)


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


_wants = wants  # MSH-15/16 (table 0155), interfaces/mllp/ack.py


class Hl7Pipeline:
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

    # -- step 1 ----------------------------------------------------------------------------------------
    def accept(self, raw: bytes, oversize: int | None = None) -> Accepted:
        return self.accept_text(decode(raw), oversize, _byte_errors(raw))

    def accept_text(self, text: str, oversize: int | None = None, errors: Sequence[ErrorDetail] = ()) -> Accepted:
        try:
            msg = parse(text)
        except MessageError as exc:  # (a cut-off oversize frame may not parse: the size is the reason then)
            return self._reject_unreadable(text, _too_large(oversize) if oversize is not None else str(exc),
                                           0 if oversize is not None else exc.field)
        header = read_header(msg)
        if oversize is not None:
            detail = ErrorDetail(APPLICATION_INTERNAL_ERROR, _too_large(oversize))
            return self._store_rejected(msg, header, text, detail)
        if not header.version_supported(self.legacy_versions):
            off = " (2.1 and 2.2 are turned off: hl7_legacy_versions)" if header.version in LEGACY_VERSIONS else ""
            detail = ErrorDetail(UNSUPPORTED_VERSION_ID, f"Unsupported version {header.version or '(none)'}{off}",
                                 "MSH", 1, 12, 1)
            return self._store_rejected(msg, header, text, detail)
        if header.message_type in QUERY_TYPES and header.event not in QUERY_EVENTS:  # QRY^Q01, QBP^Q22, ...
            detail = ErrorDetail(UNSUPPORTED_EVENT_CODE, f"Unsupported query {header.event}: queries answered here "
                                 f"are {', '.join(QUERY_EVENTS)}", "MSH", 1, 9, 2)
            return self._store_rejected(msg, header, text, detail)
        try:
            if header.event not in QUERY_EVENTS:
                self.mapper.template_for(header)
        except RejectedMessage as exc:
            return self._store_rejected(msg, header, text, exc.detail)
        if not header.control_id:  # nothing to tell a re-send from a new message by: refused, not guessed at
            detail = ErrorDetail(REQUIRED_FIELD_MISSING, "MSH-10 (message control id) is required: without it "
                                 "a re-sent message cannot be recognised", "MSH", 1, 10)
            return self._store_rejected(msg, header, text, detail)
        text = _storable(text, msg.enc)
        if header.event in QUERY_EVENTS:
            return self._query(msg, header, text)
        # Enhanced mode: the accept ACK (CA) is committed with the message, then sent before processing.
        accept_ack = build_ack(header, "CA", enc=msg.enc) \
            if header.enhanced and _wants(header.accept_ack, True) else None
        key = (header.sender[:255], header.control_id[:199]) if header.control_id else None
        if key is not None:
            running = self.inflight.claim(key)
            if running is not None:  # the first copy is still being processed: its outcome answers this one
                return Accepted([], None, header, msg, original=running, errors=list(errors))
        try:
            stored = self.store.receive(sender=header.sender, control_id=header.control_id or None,
                                        message_type=header.event, version=header.version, raw=text,
                                        ack=accept_ack)
        except BaseException:
            if key is not None:
                self.inflight.release(key)
            raise
        if stored.duplicate and not same_content(stored.raw, text):
            # MSH-10 reused by this sender for another message (its counter restarted, an interface was
            # re-installed): never answered with the old ACK and dropped.
            stored = self._reused(header, msg, text, accept_ack)
            if stored.status == REJECTED:
                if key is not None:
                    self.inflight.release(key)
                return Accepted(stored.acks, stored, header, msg)
        if stored.duplicate:
            if stored.acks:  # the original outcome, re-sent as it was
                if key is not None:
                    self.inflight.release(key)
                return Accepted(stored.acks, stored, header, msg)
            log.info("hl7 message %s is a re-send of one not yet acknowledged; processing it", stored.pk)
        return Accepted([accept_ack] if accept_ack else [], stored, header, msg, to_process=True, claimed=key,
                        errors=list(errors))

    def _reused(self, header: Header, msg: V2Message, text: str, accept_ack: str | None) -> StoredMessage:
        """Store a message whose control id this sender already used for other content, under its own key
        (control id + digest of the content, so a re-send of it is still a duplicate): to be processed as
        new with a warning, or (``hl7_reused_control_id=reject``) refused with AR naming MSH-10."""
        reused_key = reused_control_id(header.control_id, text)
        log.warning("hl7 control id reused with other content by a sender; stored as %s", reused_key)
        if self.reused_control_id == "reject":
            detail = ErrorDetail(DUPLICATE_KEY_IDENTIFIER, "MSH-10 (message control id) was already used by this "
                                 "sender for a different message", "MSH", 1, 10)
            acks = _rejection_acks(header, detail, msg.enc)
            return self.store.receive(sender=header.sender, control_id=reused_key, message_type=header.event,
                                      version=header.version, raw=text, status=REJECTED,
                                      error=detail.describe(), ack=ACK_SEPARATOR.join(acks))
        return self.store.receive(sender=header.sender, control_id=reused_key, message_type=header.event,
                                  version=header.version, raw=text, ack=accept_ack)

    def _query(self, msg: V2Message, header: Header, text: str) -> Accepted:
        """A query answered at once (RSP^K11; in enhanced mode after the accept ACK MSH-15 asks for), stored
        with its answer like any message (a re-send gets the same answer back; the query writes nothing)."""
        stored = self.store.receive(sender=header.sender, control_id=header.control_id, message_type=header.event,
                                    version=header.version, raw=text)
        if stored.duplicate and stored.acks and same_content(stored.raw, text):
            return Accepted(stored.acks, stored, header, msg)
        answers = query_responses(self.server, header, msg)
        if not stored.duplicate:
            self.store.finish(stored.pk, status=PROCESSED, ack=ACK_SEPARATOR.join(answers) or None)
        return Accepted(answers, stored, header, msg)

    def wait_for_original(self, acc: Accepted, text: str) -> Accepted:
        """For a copy of a message in flight: block until the first copy has finished, then answer with its
        stored outcome (or, if it left none, take the message over). Still waiting after ``inflight_wait``:
        ``original`` stays set, and ``still_in_flight`` gives the answer."""
        deadline = time.monotonic() + self.inflight_wait
        while acc.original is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not acc.original.wait(remaining):
                return acc
            assert acc.header is not None
            row = self.store.find(acc.header.sender[:255], acc.header.control_id[:199])
            if row is not None and row.acks and row.status != RECEIVED:
                return Accepted(row.acks, row, acc.header, acc.msg)
            acc = self.accept_text(text, errors=acc.errors)  # the first copy left no outcome: this one runs it
        return acc

    def still_in_flight(self, acc: Accepted) -> str:
        """The answer to a copy whose original did not finish in time (not stored: the original's is)."""
        assert acc.header is not None
        detail = ErrorDetail(APPLICATION_INTERNAL_ERROR, "A message with this control id from this sender is "
                             "still being processed; re-send it later for its outcome", "MSH", 1, 10, 1)
        enc = acc.msg.enc if acc.msg is not None else None
        return build_ack(acc.header, "CE" if acc.header.enhanced else "AE", [detail], enc=enc)

    def refuse(self, raw: bytes, detail: ErrorDetail) -> Accepted:
        """Store the message as rejected for ``detail`` (e.g. no hospital takes its MSH-6) and AR it."""
        text = decode(raw)
        try:
            msg = parse(text)
        except MessageError:
            return self._reject_unreadable(text, detail.text)
        return self._store_rejected(msg, read_header(msg), text, detail)

    def _reject_unreadable(self, text: str, reason: str, msh_field: int = 0) -> Accepted:
        detail = ErrorDetail(DATA_TYPE_ERROR, reason, "MSH", 1, msh_field) if msh_field \
            else ErrorDetail(APPLICATION_INTERNAL_ERROR, reason, "MSH", 1)
        msh = parse_msh(text)
        if msh is None:  # not even MSH: a minimal ACK
            ack = build_ack(None, "AR", [detail])
            self.store.receive(sender="", control_id=None, message_type="", version="", raw=text,
                               status=REJECTED, error=reason, ack=ack)
            return Accepted([ack])
        # MSH was readable: answer its sender properly (MSA-2, MSH-3/4 <-> 5/6). Stored without its control
        # id, so that a corrected message re-sent under the same id is not taken for a duplicate of this.
        header = read_header(msh)
        acks = _rejection_acks(header, detail, msh.enc)
        self.store.receive(sender=header.sender, control_id=None, message_type=header.event,
                           version=header.version, raw=_storable(text, msh.enc), status=REJECTED, error=reason,
                           ack=ACK_SEPARATOR.join(acks))
        return Accepted(acks)

    def _store_rejected(self, msg: V2Message, header: Header, text: str, detail: ErrorDetail) -> Accepted:
        acks = _rejection_acks(header, detail, msg.enc)
        stored = self.store.receive(sender=header.sender, control_id=header.control_id or None,
                                    message_type=header.event, version=header.version,
                                    raw=_storable(text, msg.enc),
                                    status=REJECTED, error=detail.describe(), ack=ACK_SEPARATOR.join(acks))
        if stored.duplicate and stored.acks:
            return Accepted(stored.acks, stored, header, msg)
        return Accepted(acks, stored, header, msg)

    # -- step 2 ----------------------------------------------------------------------------------------
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


def _rejection_acks(header: Header, detail: ErrorDetail, enc: Encoding | None) -> list[str]:
    """The ACKs a refused message gets, as MSH-15/16 ask: original mode one AR; enhanced mode CR unless
    MSH-15 says NE/SU, then the application AR unless MSH-16 says NE/SU (the sender waits for it)."""
    if not header.enhanced:
        return [build_ack(header, "AR", [detail], enc=enc)]
    acks = [build_ack(header, "CR", [detail], enc=enc)] if _wants(header.accept_ack, False) else []
    if _wants(header.application_ack, False):
        acks.append(build_ack(header, "AR", [detail], enc=enc))
    return acks


REUSED_MARK = "#reused-"
REUSED_WARNING = ("warning: MSH-10 was already used by this sender for a different message; processed as a new "
                  "message (stored under control id + #reused- + a digest of its content)")


def reused_control_id(control_id: str, text: str) -> str:
    """The store key of a message whose MSH-10 its sender already used for other content."""
    digest = hashlib.sha256(_content(text).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{control_id[:199 - len(REUSED_MARK) - 16]}{REUSED_MARK}{digest}"


def _content(text: str) -> str:
    """What makes two copies the same message: every segment, MSH-7 (time of this sending) left out."""
    segments = [s for s in re.split(r"\r\n|\r|\n", text.strip("\r\n \x0b\x1c")) if s]
    if segments and segments[0].startswith("MSH") and len(segments[0]) > 3:
        fields = segments[0].split(segments[0][3])
        if len(fields) > 6:
            fields[6] = ""
        segments[0] = segments[0][3].join(fields)
    return "\r".join(segments)


def same_content(stored: str, text: str) -> bool:
    return _content(stored) == _content(text)


def _too_large(size: int) -> str:
    return f"Message of {size} bytes exceeds the limit"


def _byte_errors(raw: bytes) -> list[ErrorDetail]:
    problem = charset_error(raw)
    return [ErrorDetail(DATA_TYPE_ERROR, problem, "MSH", 1, 18)] if problem else []


def _storable(text: str, enc: Encoding) -> str:
    """The text as stored: U+0000, which PostgreSQL text cannot hold, as the HL7 hex escape \\X00\\ (the same
    character to a reader of the message, so a replay refuses it again rather than mapping it changed)."""
    if "\x00" not in text or not enc.escape:
        return text
    return text.replace("\x00", f"{enc.escape}X00{enc.escape}")


def _reference(location: str) -> str | None:
    """"Type/id" from a write's Location (``[base/]Type/id/_history/n``)."""
    parts = location.split("/")
    if len(parts) < 2:
        return None
    idx = parts.index("_history") if "_history" in parts else len(parts)
    return "/".join(parts[max(0, idx - 2):idx]) or None
