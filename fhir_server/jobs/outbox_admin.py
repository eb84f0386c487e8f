"""Inspecting, retrying and discarding outbox rows (``fhir-server outbox list|retry|discard``, GET /admin/outbox)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from fhir_server.storage.models import OUTBOX
from fhir_server.storage.repository import instant

OB = OUTBOX
STATUSES = ("pending", "held", "delivering", "done", "dead")  # held: awaiting a subscription's handshake


def list_rows(engine: Engine, status: str | None = None, limit: int = 100) -> dict[str, Any]:
    """Counts by status and the newest ``limit`` rows (optionally of one status), without payloads:
    payloads may carry clinical content, and this view is for operators."""
    with engine.connect() as conn:
        counts = {r.status: int(r.n) for r in conn.execute(
            select(OB.c.status, func.count().label("n")).group_by(OB.c.status))}
        stmt = select(OB.c.pk, OB.c.topic, OB.c.key, OB.c.status, OB.c.attempts, OB.c.max_attempts,
                      OB.c.next_attempt_at, OB.c.created_at, OB.c.last_error).order_by(OB.c.pk.desc()).limit(limit)
        if status:
            stmt = stmt.where(OB.c.status == status)
        rows = [{"id": r.pk, "topic": r.topic, "key": r.key, "status": r.status, "attempts": r.attempts,
                 "maxAttempts": r.max_attempts, "nextAttemptAt": instant(r.next_attempt_at),
                 "createdAt": instant(r.created_at), "lastError": r.last_error} for r in conn.execute(stmt)]
    return {"counts": {s: counts.get(s, 0) for s in STATUSES}, "rows": rows}


def retry(engine: Engine, pk: int | None = None, *, dead: bool = False) -> int:
    """Make one row (any status) or every dead row due now, with a fresh set of attempts."""
    stmt = update(OB).values(status="pending", attempts=0, next_attempt_at=datetime.now(UTC))
    if pk is not None:
        stmt = stmt.where(OB.c.pk == pk)
    elif dead:
        stmt = stmt.where(OB.c.status == "dead")
    else:
        raise ValueError("name a row or ask for the dead ones")
    with engine.connect() as conn:
        conn.execution_options(fhir_write=True)
        with conn.begin():
            return int(conn.execute(stmt).rowcount)


def discard(engine: Engine, pk: int | None = None, *, dead: bool = False) -> int:
    """Give up on one dead row, or every dead row: marked done with ``last_error`` saying so (kept for the
    record). A discarded rest-hook notification no longer holds its subscription in ``error``: a status
    refresh is queued for it (fhir_server/subscriptions/delivery.py: RestHook.refresh)."""
    from fhir_server.subscriptions.engine import NOTIFY_TOPIC, STATUS_TOPIC

    where = [OB.c.status == "dead"]
    if pk is not None:
        where.append(OB.c.pk == pk)
    elif not dead:
        raise ValueError("name a row or ask for the dead ones")
    now = datetime.now(UTC)
    with engine.connect() as conn:
        conn.execution_options(fhir_write=True)
        with conn.begin():
            rows = conn.execute(select(OB.c.pk, OB.c.topic, OB.c.payload).where(*where).with_for_update()).all()
            if not rows:
                return 0
            conn.execute(update(OB).where(OB.c.pk.in_([r.pk for r in rows]))
                         .values(status="done", last_error="discarded by an operator (was dead)"))
            for sid in sorted({str(r.payload["subscription"]) for r in rows if r.topic == NOTIFY_TOPIC}):
                conn.execute(insert(OB).values(topic=STATUS_TOPIC, key=f"Subscription/{sid}/status/{now.timestamp()}",
                                               payload={"subscription": sid}, status="pending", attempts=0,
                                               max_attempts=10, next_attempt_at=now, created_at=now))
    return len(rows)
