"""The operators' view of the HL7 v2 message store (GET /admin/hl7/messages; `fhir-server hl7 stats`).

Counts by status and the newest messages, newest first, paged by a ``before`` cursor (the row's pk). By
default a row shows only what runs the interface — who sent it, its control id, type, status, times,
attempts, what it produced — and its error with every quoted value masked (errors quote the offending field,
which may be a name or a birth date). The raw message, the ACKs sent and the unmasked error are shown only
when ``reveal`` is asked for (the web adapter allows that to admins alone).
"""

from __future__ import annotations

import re
from typing import Any

from interfaces.mllp.store import STATUSES, MessageStore, StoredMessage

MAX_LIMIT = 500
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


class BadQuery(ValueError):
    """A parameter the caller got wrong: (parameter name, message)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def mask(text: str | None) -> str | None:
    """The error text with each quoted value (the message's own content) replaced by '***'."""
    if text is None:
        return None
    return _QUOTED.sub(lambda m: m.group(0)[0] + "***" + m.group(0)[0], text)


def _entry(row: StoredMessage, reveal: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.pk, "sender": row.sender, "controlId": row.control_id, "type": row.message_type,
        "version": row.version, "status": row.status, "receivedAt": row.received_at.isoformat(),
        "processedAt": row.processed_at.isoformat() if row.processed_at else None, "attempts": row.attempts,
        "resources": row.resources or [], "error": row.error if reveal else mask(row.error),
    }
    if reveal:
        out["raw"] = row.raw
        out["acks"] = row.acks
    return out


def message_overview(store: MessageStore, *, status: str | None = None, limit: int = 50,
                     before: int | None = None, reveal: bool = False) -> dict[str, Any]:
    if status is not None and status not in STATUSES:
        raise BadQuery("status", f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery("limit", f"limit must be between 1 and {MAX_LIMIT}")
    rows = store.page(status, limit + 1, before)
    body: dict[str, Any] = {
        "counts": {s: 0 for s in STATUSES} | store.counts(),
        "messages": [_entry(r, reveal) for r in rows[:limit]],
        "masked": not reveal,
    }
    if len(rows) > limit:
        body["before"] = rows[limit - 1].pk  # pass back as ?before= for the next (older) page
    return body
