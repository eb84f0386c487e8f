"""Acknowledgements: ACK messages with MSA and, for errors, ERR naming segment/field/component and reason.

Codes are HL7 table 0008 (AA/AE/AR, and CA/CE/CR for enhanced-mode accept acknowledgements) and table
0357 for ERR-3 (message error condition codes). ERR-1 (ELD) is written for versions before 2.5, where it
is the only error field; 2.5 and later use ERR-2 (ERL location), ERR-3 and ERR-4 (severity).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from datetime import UTC, datetime

from mappings.hl7v2.errors import ERROR_TEXT, ErrorDetail
from mappings.hl7v2.header import Header
from mappings.hl7v2.message import Encoding, escape

_counter = itertools.count(1)
_PREFIX = os.urandom(3).hex()


def _control_id() -> str:
    return f"ACK{_PREFIX}{next(_counter)}"


def _older_than_25(version: str) -> bool:
    return version.startswith(("2.1", "2.2", "2.3", "2.4"))


def build_ack(header: Header | None, code: str, errors: Sequence[ErrorDetail] = (), *,
              text: str = "", enc: Encoding | None = None, now: datetime | None = None) -> str:
    """An ACK for ``header`` (None when MSH could not be read: a minimal ACK in 2.5)."""
    enc = enc or Encoding()
    f, c = enc.field, enc.component
    when = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    version = header.version if header and header.version else "2.5"
    trigger = header.trigger_event if header else ""
    control = header.control_id if header else ""
    msh = f.join([
        "MSH", enc.msh2,
        escape(header.receiving_application, enc) if header else "",
        escape(header.receiving_facility, enc) if header else "",
        escape(header.sending_application, enc) if header else "",
        escape(header.sending_facility, enc) if header else "",
        when, "", f"ACK{c}{trigger}{c}ACK" if trigger else "ACK", _control_id(),
        header.processing_id if header and header.processing_id else "P", version,
    ])
    # MSA-3 (text message) is deprecated from 2.4 but still read by many senders; keep it short.
    msa_text = escape(text or (errors[0].text if errors else ""), enc)[:80]
    segments = [msh, f.join(["MSA", code, escape(control, enc), msa_text])]
    segments += [_err(e, enc, version) for e in errors]
    return "\r".join(segments) + "\r"


def _err(e: ErrorDetail, enc: Encoding, version: str) -> str:
    f, c, s = enc.field, enc.component, enc.subcomponent
    name = ERROR_TEXT.get(e.code, "")
    if _older_than_25(version):
        # ERR-1 ELD: segment id ^ sequence ^ field position ^ code (CE: identifier & text & table)
        eld = c.join([e.segment, str(e.sequence) if e.segment else "", str(e.field or ""),
                      s.join([e.code, escape(name, enc), "HL70357"])])
        return f.join(["ERR", eld])
    erl = c.join([e.segment, str(e.sequence) if e.segment else "", str(e.field or ""),
                  "1" if e.component else "", str(e.component or "")]).rstrip(c) if e.segment else ""
    cwe = c.join([e.code, escape(name, enc), "HL70357"])
    return f.join(["ERR", "", erl, cwe, e.severity, "", "", "", escape(e.text, enc)[:250]])


def wants(condition: str, success: bool) -> bool:
    """MSH-15/16 (table 0155): AL always, NE never, ER only on error, SU only on success; empty = AL."""
    condition = condition or "AL"
    return condition == "AL" or (condition == "SU" and success) or (condition == "ER" and not success)
