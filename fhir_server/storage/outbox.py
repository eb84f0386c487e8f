"""Outbox dispatcher: delivers outbox rows at least once, with exponential backoff and a dead-letter status.

Rows are claimed with a lease (status ``delivering`` and ``next_attempt_at`` = now + lease): a dispatcher
that dies mid-delivery leaves the row to be claimed again when the lease runs out. Handlers must therefore
be idempotent by the row's ``key``. This in-process dispatcher serves the embedded default; celery workers
take over the same table in production (jobs issue).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update

from fhir_server.storage.models import OUTBOX

log = logging.getLogger(__name__)

OutboxHandler = Callable[[str, dict[str, Any]], None]  # (key, payload); raise to retry


@dataclass(frozen=True)
class Claimed:
    pk: int
    topic: str
    key: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int


def backoff(attempts: int, base: float = 1.0, cap: float = 3600.0) -> timedelta:
    return timedelta(seconds=min(cap, base * 2 ** max(attempts - 1, 0)))


class OutboxDispatcher:
    def __init__(self, engine: Engine, *, lease: timedelta = timedelta(minutes=5), batch: int = 50,
                 backoff_base: float = 1.0) -> None:
        self.engine = engine
        self.handlers: dict[str, OutboxHandler] = {}
        self.lease = lease
        self.batch = batch
        self.backoff_base = backoff_base
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, topic: str, handler: OutboxHandler) -> None:
        self.handlers[topic] = handler

    def claim(self) -> list[Claimed]:
        now = datetime.now(UTC)
        with self.engine.connect() as conn:
            conn.execution_options(fhir_write=True)
            with conn.begin():
                stmt = (select(OUTBOX).where(OUTBOX.c.status.in_(("pending", "delivering")),
                                             OUTBOX.c.next_attempt_at <= now,
                                             OUTBOX.c.topic.in_(list(self.handlers)))
                        .order_by(OUTBOX.c.pk).limit(self.batch).with_for_update(skip_locked=True))
                rows = conn.execute(stmt).all()
                if rows:
                    conn.execute(update(OUTBOX).where(OUTBOX.c.pk.in_([r.pk for r in rows])).values(
                        status="delivering", attempts=OUTBOX.c.attempts + 1, next_attempt_at=now + self.lease))
        return [Claimed(r.pk, r.topic, r.key, r.payload, r.attempts + 1, r.max_attempts) for r in rows]

    def deliver(self, item: Claimed) -> bool:
        try:
            self.handlers[item.topic](item.key, item.payload)
        except Exception as exc:  # any failure of a receiver means: try again later
            dead = item.attempts >= item.max_attempts
            values: dict[str, Any] = {"status": "dead" if dead else "pending", "last_error": str(exc)[:2000],
                                      "next_attempt_at": datetime.now(UTC) + backoff(item.attempts,
                                                                                    self.backoff_base)}
            self._finish(item.pk, values)
            log.warning("outbox %s %s attempt %d failed%s", item.topic, item.key, item.attempts,
                        " (dead-lettered)" if dead else "")
            return False
        self._finish(item.pk, {"status": "done", "last_error": None})
        return True

    def _finish(self, pk: int, values: dict[str, Any]) -> None:
        with self.engine.connect() as conn:
            conn.execution_options(fhir_write=True)
            with conn.begin():
                conn.execute(update(OUTBOX).where(OUTBOX.c.pk == pk).values(**values))

    def run_once(self) -> int:
        """Claim and deliver what is due; returns how many were delivered."""
        return sum(self.deliver(item) for item in self.claim())

    def wake(self) -> None:
        self._wake.set()

    def start(self, poll_seconds: float = 1.0) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.run_once()
                except Exception:
                    log.exception("outbox dispatch failed")
                self._wake.wait(poll_seconds)
                self._wake.clear()

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="outbox-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
