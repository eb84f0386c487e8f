"""Step 1 of a message through the adapter (pipeline.py): decode MSH, store the message (committed), and
answer duplicates, queries and rejections at once. In enhanced acknowledgement mode the accept ACK is
committed with the message and sent before processing (process.py)."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from fhir_server.rest.server import FhirServer
from interfaces.mllp.ack import build_ack, wants
from interfaces.mllp.inflight import InFlight, Key
from interfaces.mllp.query import QUERY_EVENTS, QUERY_TYPES
from interfaces.mllp.query import responses as query_responses
from interfaces.mllp.store import ACK_SEPARATOR, PROCESSED, RECEIVED, REJECTED, MessageStore, StoredMessage
from mappings.hl7v2.errors import (
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    DUPLICATE_KEY_IDENTIFIER,
    REQUIRED_FIELD_MISSING,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_VERSION_ID,
    ErrorDetail,
    RejectedMessage,
)
from mappings.hl7v2.header import LEGACY_VERSIONS, Header, read_header
from mappings.hl7v2.mapper import V2Mapper
from mappings.hl7v2.message import Encoding, MessageError, V2Message, charset_error, decode, parse, parse_msh

log = logging.getLogger(__name__)

_wants = wants  # MSH-15/16 (table 0155), interfaces/mllp/ack.py


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


class Acceptor:
    """The accept half of ``Hl7Pipeline`` (pipeline.py builds both halves over one server and store)."""

    server: FhirServer
    store: MessageStore
    mapper: V2Mapper
    inflight: InFlight
    reused_control_id: str
    legacy_versions: bool
    inflight_wait: float

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
