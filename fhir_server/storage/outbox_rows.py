"""The outbox rows a dispatcher holds under its lease: claiming them, counting attempts and finishing them,
handing them back, and the heartbeat's renewal. Every statement that changes a held row names the holder
(``lease_owner``) and the ``delivering`` status, so a dispatcher whose lease lapsed (another took the row)
changes nothing. The dispatcher (outbox.py) decides what to deliver when; this is what it writes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, select, text, update

from fhir_server.storage.models import OUTBOX
from fhir_server.storage.outbox_attempt import Claimed, Done

log = logging.getLogger(__name__)

# The two statements every delivery runs, as text: built and compiled once (SQLAlchemy's statement building
# cost more CPU than PostgreSQL's work). The table is found on the search path (a tenant's schema).
_FINISH = text(f"UPDATE {OUTBOX.name} SET status = 'done', last_error = NULL, lease_owner = NULL, "
               "attempts = attempts + :extra WHERE pk IN :pks AND lease_owner = :owner AND status = 'delivering'"
               ).bindparams(bindparam("pks", expanding=True))
_COUNT_AND_FINISH = text(
    f"UPDATE {OUTBOX.name} SET attempts = CASE WHEN pk = :pk THEN :attempts ELSE attempts END, "
    "status = CASE WHEN pk = :pk THEN status ELSE 'done' END, "
    "last_error = CASE WHEN pk = :pk THEN last_error ELSE NULL END, "
    "lease_owner = CASE WHEN pk = :pk THEN lease_owner ELSE NULL END "
    "WHERE pk IN :pks AND lease_owner = :owner AND status = 'delivering' RETURNING pk"
).bindparams(bindparam("pks", expanding=True))
_COUNT = text(f"UPDATE {OUTBOX.name} SET attempts = :attempts "
              "WHERE pk = :pk AND lease_owner = :owner AND status = 'delivering'")


@dataclass
class Held:
    """The rows this dispatcher holds (claimed, not finished): what the heartbeat renews."""

    pks: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class LeasedRows:
    """The lease-holding half of ``OutboxDispatcher`` (which sets these attributes)."""

    engine: Engine
    owner: str
    lease: timedelta
    batch: int
    handlers: dict[str, Any]
    _held: Held

    # --- claiming and finishing ---------------------------------------------------------------------------

    def claim(self) -> list[Claimed]:
        now = datetime.now(UTC)
        due = (select(OUTBOX.c.pk).where(OUTBOX.c.status.in_(("pending", "delivering")),
                                         OUTBOX.c.next_attempt_at <= now,
                                         OUTBOX.c.topic.in_(list(self.handlers)))
               .order_by(OUTBOX.c.pk).limit(self.batch).with_for_update(skip_locked=True))
        # One statement: atomic on SQLite too (two processes on one file never both take a row).
        stmt = (update(OUTBOX).where(OUTBOX.c.pk.in_(due.scalar_subquery()))
                .values(status="delivering", lease_owner=self.owner, next_attempt_at=now + self.lease)
                .returning(OUTBOX.c.pk, OUTBOX.c.topic, OUTBOX.c.key, OUTBOX.c.payload, OUTBOX.c.attempts,
                           OUTBOX.c.max_attempts))
        with self.engine.connect() as conn:
            conn.execution_options(fhir_write=True)
            with conn.begin():
                rows = conn.execute(stmt).all()
        claimed = sorted((Claimed(r.pk, r.topic, r.key, r.payload, r.attempts, r.max_attempts) for r in rows),
                         key=lambda c: c.pk)
        if claimed:
            with self._held.lock:
                self._held.pks.update(c.pk for c in claimed)
        return claimed

    def holds(self) -> bool:
        with self._held.lock:
            return bool(self._held.pks)

    def _write(self, done: Done, pk: int | None = None, values: dict[str, Any] | None = None) -> bool:
        """In one transaction: finish the delivered rows in ``done`` (then empty it), and change row ``pk``;
        False when this dispatcher no longer holds ``pk`` (its lease lapsed, another took it)."""
        counted = [item.pk for item, was_counted in done if was_counted]
        uncounted = [item.pk for item, was_counted in done if not was_counted]
        changed = True
        with self.engine.connect() as conn:
            conn.execution_options(fhir_write=True)
            with conn.begin():
                lost = len(done)
                if pk is not None and values is not None and set(values) == {"attempts"} and not uncounted:
                    # The hot path, one statement: count this row's attempt, finish the delivered ones.
                    taken = {r[0] for r in conn.execute(_COUNT_AND_FINISH, {
                        "pk": pk, "pks": [pk, *counted], "attempts": values["attempts"], "owner": self.owner})}
                    changed = pk in taken
                    lost -= len(taken - {pk})
                    counted, pk = [], None  # done
                # a handler that made no counted request: its attempt counts as it finishes (extra 1)
                for pks, extra in ((counted, 0), (uncounted, 1)):
                    if pks:
                        lost -= conn.execute(_FINISH, {"pks": pks, "extra": extra, "owner": self.owner}).rowcount or 0
                if pk is not None and values is not None and set(values) == {"attempts"}:  # the hot path: text
                    changed = bool(conn.execute(_COUNT, {"pk": pk, "attempts": values["attempts"],
                                                         "owner": self.owner}).rowcount)
                elif pk is not None:
                    changed = bool(conn.execute(update(OUTBOX).where(
                        OUTBOX.c.pk == pk, OUTBOX.c.lease_owner == self.owner, OUTBOX.c.status == "delivering")
                                                .values(**(values or {}))).rowcount)
        if done:
            with self._held.lock:
                self._held.pks.difference_update(item.pk for item, _counted in done)
            if lost:
                log.warning("outbox: %d row(s) delivered after their lease was lost", lost)
            done.clear()
        return changed

    def _finish(self, done: Done, pk: int, values: dict[str, Any]) -> None:
        with self._held.lock:
            self._held.pks.discard(pk)
        if not self._write(done, pk, {**values, "lease_owner": None}):
            log.warning("outbox row %d: the lease was lost before it was finished", pk)

    def release(self, items: list[Claimed], when: datetime | None = None) -> None:
        """Hand rows back unattempted (stopping, or their partition's earlier row failed): pending again."""
        if not items:
            return
        pks = [i.pk for i in items]
        with self._held.lock:
            self._held.pks.difference_update(pks)
        with self.engine.connect() as conn:
            conn.execution_options(fhir_write=True)
            with conn.begin():
                conn.execute(update(OUTBOX).where(OUTBOX.c.pk.in_(pks), OUTBOX.c.lease_owner == self.owner,
                                                  OUTBOX.c.status == "delivering")
                             .values(status="pending", lease_owner=None, next_attempt_at=when or datetime.now(UTC)))

    # --- the heartbeat ------------------------------------------------------------------------------------

    def renew(self) -> int:
        """Extend the lease of every row this dispatcher holds; how many it still holds."""
        with self._held.lock:
            if not self._held.pks:
                return 0
        with self.engine.connect() as conn:
            conn.execution_options(fhir_write=True)
            with conn.begin():
                # SKIP LOCKED: a row a lane is counting or finishing right now is skipped, not waited for (a
                # lane's statement locks several rows: waiting here made deadlocks, PostgreSQL's 1 s each).
                held = select(OUTBOX.c.pk).where(OUTBOX.c.lease_owner == self.owner, OUTBOX.c.status == "delivering") \
                    .with_for_update(skip_locked=True)
                result = conn.execute(update(OUTBOX).where(OUTBOX.c.pk.in_(held.scalar_subquery()))
                                      .values(next_attempt_at=datetime.now(UTC) + self.lease))
        return int(result.rowcount or 0)
