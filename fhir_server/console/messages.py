"""The console's queries over the HL7 v2 message store (interfaces/mllp/store.py): search by sender, control
id, type, status and patient identifier, newest first with a ``before`` cursor; counts by status, by sender
and by day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from fhir_server.console.v2mask import identifiers
from interfaces.mllp.store import HL7_MESSAGE, STATUSES, StoredMessage, _row

M = HL7_MESSAGE
MAX_PAGE = 200
SCAN = 2000  # rows read for one page when a patient identifier is asked (each confirmed against PID-3)


@dataclass(frozen=True)
class Filters:
    sender: str = ""
    control_id: str = ""
    type: str = ""
    status: str = ""
    patient: str = ""  # a PID-3 identifier value

    @classmethod
    def of(cls, values: dict[str, str]) -> Filters:
        f = cls(**{k: (values.get(k) or "").strip()[:200] for k in ("sender", "control_id", "type", "status",
                                                                     "patient")})
        if f.status and f.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        return f

    def query(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}

    def where(self) -> list[Any]:
        out: list[Any] = []
        if self.sender:
            out.append(M.c.sender == self.sender)
        if self.control_id:
            out.append(M.c.control_id == self.control_id)
        if self.type:
            out.append(M.c.message_type == self.type)
        if self.status:
            out.append(M.c.status == self.status)
        if self.patient:  # narrowed in SQL, confirmed on PID-3 after
            escaped = self.patient.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            out.append(M.c.raw.like(f"%{escaped}%", escape="\\"))
        return out


def search(engine: Engine, filters: Filters, limit: int = 50, before: int | None = None) -> tuple[list[StoredMessage],
                                                                                              int | None]:
    """(messages newest first, the cursor of the next older page or None)."""
    limit = max(1, min(limit, MAX_PAGE))
    stmt = select(M).where(*filters.where())
    if before is not None:
        stmt = stmt.where(M.c.pk < before)
    fetch = SCAN if filters.patient else limit + 1
    with engine.connect() as conn:
        rows = [_row(r) for r in conn.execute(stmt.order_by(M.c.pk.desc()).limit(fetch))]
    if filters.patient:
        last, full = (rows[-1].pk if rows else None), len(rows) == fetch
        rows = [r for r in rows if filters.patient in identifiers(r.raw)]
        if len(rows) <= limit:  # more may be older than what was scanned: go on from the last one read
            return rows, last if full else None
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1].pk
    return rows, None


def every_match(engine: Engine, filters: Filters, cap: int) -> list[StoredMessage]:
    """Up to ``cap`` messages matching the filters, oldest first (a replay of a set goes in arrival order)."""
    out: list[StoredMessage] = []
    before: int | None = None
    while len(out) < cap:
        page, before = search(engine, filters, MAX_PAGE, before)
        out.extend(page)
        if before is None:
            break
    return list(reversed(out[:cap]))


def counts(engine: Engine, days: int = 7) -> dict[str, Any]:
    """By status (all time), by sender and status (all time), by day and status (the last ``days``)."""
    since = datetime.now(UTC) - timedelta(days=days)
    day = func.date(M.c.received_at)
    with engine.connect() as conn:
        by_status = {s: int(n) for s, n in conn.execute(select(M.c.status, func.count()).group_by(M.c.status))}
        senders: dict[str, dict[str, int]] = {}
        for sender, status, n in conn.execute(select(M.c.sender, M.c.status, func.count())
                                              .group_by(M.c.sender, M.c.status)):
            senders.setdefault(sender, dict.fromkeys(STATUSES, 0))[status] = int(n)
        daily: dict[str, dict[str, int]] = {}
        for when, status, n in conn.execute(select(day, M.c.status, func.count()).where(M.c.received_at >= since)
                                            .group_by(day, M.c.status)):
            daily.setdefault(str(when), dict.fromkeys(STATUSES, 0))[status] = int(n)
    return {"status": dict.fromkeys(STATUSES, 0) | by_status,
            "senders": dict(sorted(senders.items())), "days": dict(sorted(daily.items(), reverse=True))}
