"""Message-wide content checks that run before any mapping (each failure is an AE naming the field).

- U+0000 (NUL) in any field, sent raw or as the hex escape ``\\X00\\``: FHIR strings may not contain it
  (and PostgreSQL text cannot hold it), so the message is refused naming each field, e.g. PID-5;
- MSH-7 (date/time of message) must be a valid TS/DTM when valued.
Character-set errors (bytes invalid for the MSH-18 charset) are found on the bytes, see ``message.py``.
"""

from __future__ import annotations

from mappings.hl7v2 import convert
from mappings.hl7v2.errors import DATA_TYPE_ERROR, ErrorDetail
from mappings.hl7v2.header import Header
from mappings.hl7v2.message import V2Message, unescape

NUL = "\x00"
MAX_NUL_ERRORS = 10  # one ERR per field, enough to find them all in practice without an unbounded ACK


def nul_fields(msg: V2Message) -> list[ErrorDetail]:
    """One error per field holding U+0000 (first ``MAX_NUL_ERRORS``)."""
    esc = msg.enc.escape
    if NUL not in msg.text and not (esc and f"{esc}X" in msg.text):
        return []  # the common case: no NUL and no hex escape that could make one
    out: list[ErrorDetail] = []
    for seg in msg.segments:
        for seq in range(1, len(seg.fields)):
            raw = seg.fields[seq]
            if NUL in raw or (esc and f"{esc}X" in raw and NUL in unescape(raw, msg.enc)):
                out.append(ErrorDetail(DATA_TYPE_ERROR, f"{seg.id}-{seq} contains U+0000 (NUL), which FHIR "
                                       "strings may not contain", seg.id, seg.occurrence, seq))
                if len(out) >= MAX_NUL_ERRORS:
                    return out
    return out


def header_fields(header: Header) -> list[ErrorDetail]:
    if not header.datetime:
        return []
    try:
        convert.to_datetime(header.datetime)
    except convert.ConversionError as exc:
        return [ErrorDetail(DATA_TYPE_ERROR, f"MSH-7 {exc}", "MSH", 1, 7)]
    return []


def message_errors(msg: V2Message, header: Header) -> list[ErrorDetail]:
    return nul_fields(msg) or header_fields(header)
