"""Outbox dispatcher: delivers outbox rows at least once, with exponential backoff and a dead-letter status.

Leases. A dispatcher claims rows (status ``delivering``, ``lease_owner`` = itself, ``next_attempt_at`` =
now + a short lease) and a heartbeat thread renews the lease of every row it holds while it works, however
long a receiver takes to answer; so no other dispatcher claims a row in flight, and a dispatcher that dies
(kill -9, power) leaves its rows silent only until the short lease lapses. A row is finished only by the
dispatcher still holding it.

Attempts. ``attempts`` counts requests actually made, not claims: a handler's HTTP client calls
``count_attempt`` just before it sends (an httpx request hook), which records the attempt before anything
reaches the receiver; a handler that does not counts when it returns or raises. A crash between claim and
request therefore costs no attempt, and a row is dead-lettered only after ``max_attempts`` real attempts.

Concurrency. Rows are delivered in ``lanes`` threads, one partition per lane at a time: a partition (by
default the topic; subscriptions partition by subscription) is delivered in outbox order, so a Backport
subscription's event numbers reach its endpoint in order while other subscriptions go in parallel. A failure
hands the rest of its partition back (pending, due with the failed row), so the order holds and a dead
endpoint costs one timeout, not one per row.

Handlers must be idempotent by the row's ``key`` (a crash after the request re-sends it). This in-process
dispatcher serves the embedded default; a ``fhir-server worker`` runs the same one (fhir_server/jobs).
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.pool import StaticPool

from fhir_server.errors import FhirError
from fhir_server.storage.models import OUTBOX

log = logging.getLogger(__name__)

OutboxHandler = Callable[[str, dict[str, Any]], None]  # (key, payload); raise to retry
Partition = Callable[[str, dict[str, Any]], str]  # (key, payload) -> the ordered stream the row belongs to


@dataclass(frozen=True)
class Claimed:
    pk: int
    topic: str
    key: str
    payload: dict[str, Any]
    attempts: int  # real attempts before this one
    max_attempts: int


@dataclass
class _Attempt:
    dispatcher: OutboxDispatcher
    item: Claimed
    counted: bool = False


_CURRENT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("outbox_attempt", default=None)


class LeaseLost(Exception):
    """The row is no longer this dispatcher's (its lease lapsed and another took it): do not send it."""


def count_attempt(_request: object = None) -> None:
    """Record that the row being delivered is being attempted now (once per delivery; a no-op outside one).
    Call it right before the request leaves; it fits httpx's ``event_hooks={"request": [...]}``. Raises
    LeaseLost (so nothing is sent) when another dispatcher holds the row now."""
    attempt = _CURRENT.get()
    if attempt is None or attempt.counted:
        return
    attempt.counted = True
    if not attempt.dispatcher._update(attempt.item.pk, {"attempts": attempt.item.attempts + 1}):
        raise LeaseLost(f"outbox row {attempt.item.pk} is held by another dispatcher now")


HAND_BACK = timedelta(milliseconds=500)  # rows of a partition busy elsewhere are due again this soon
QUEUED = 500  # rows a busy partition may have waiting in this process (beyond: handed back)


def backoff(attempts: int, base: float = 1.0, cap: float = 3600.0) -> timedelta:
    return timedelta(seconds=min(cap, base * 2 ** max(attempts - 1, 0)))


@dataclass
class _Held:
    """The rows this dispatcher holds (claimed, not finished): what its heartbeat renews."""

    pks: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class OutboxDispatcher:
    def __init__(self, engine: Engine, *, lease: timedelta = timedelta(seconds=10), batch: int = 50,
                 backoff_base: float = 1.0, lanes: int = 8) -> None:
        self.engine = engine
        self.handlers: dict[str, OutboxHandler] = {}
        self.partitions: dict[str, Partition] = {}
        self.lease = lease
        self.batch = batch
        self.backoff_base = backoff_base
        # One shared in-memory SQLite connection (StaticPool) cannot hold two transactions at once.
        self.lanes = 1 if isinstance(engine.pool, StaticPool) else max(1, lanes)
        # Unique per dispatcher object (a restarted process is a new owner): host and pid say whose it was.
        self.owner = f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._held = _Held()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        # Partitions a lane of this dispatcher is delivering -> the rows still to go, in order (newly claimed
        # rows of a busy partition join its queue: the lane goes on with them).
        self._queues: dict[str, deque[Claimed]] = {}
        self._busy_lock = threading.Lock()

    def register(self, topic: str, handler: OutboxHandler, *, partition: Partition | None = None) -> None:
        """``partition``: rows in the same partition are delivered one after another in outbox order (default:
        the whole topic); different partitions go in parallel."""
        self.handlers[topic] = handler
        if partition is not None:
            self.partitions[topic] = partition

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
            self._ensure_heartbeat()
        return claimed

    def _update(self, pk: int, values: dict[str, Any]) -> bool:
        """Change a row this dispatcher holds; False when it no longer does (its lease lapsed, another took it)."""
        with self.engine.connect() as conn:
            conn.execution_options(fhir_write=True)
            with conn.begin():
                result = conn.execute(update(OUTBOX).where(OUTBOX.c.pk == pk, OUTBOX.c.lease_owner == self.owner,
                                                           OUTBOX.c.status == "delivering").values(**values))
        return bool(result.rowcount)

    def _finish(self, pk: int, values: dict[str, Any]) -> None:
        with self._held.lock:
            self._held.pks.discard(pk)
        if not self._update(pk, {**values, "lease_owner": None}):
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
                result = conn.execute(update(OUTBOX).where(OUTBOX.c.lease_owner == self.owner,
                                                           OUTBOX.c.status == "delivering")
                                      .values(next_attempt_at=datetime.now(UTC) + self.lease))
        return int(result.rowcount or 0)

    def _ensure_heartbeat(self) -> None:
        with self._held.lock:
            if self._heartbeat is not None and self._heartbeat.is_alive():
                return
            self._heartbeat = threading.Thread(target=self._beat, name="outbox-heartbeat", daemon=True)
            self._heartbeat.start()

    def _beat(self) -> None:
        """Renew three times per lease while anything is held; end when nothing is (the next claim restarts it)."""
        interval = max(self.lease.total_seconds() / 3, 0.05)
        while not self._stop.wait(interval):
            with self._held.lock:
                if not self._held.pks:
                    self._heartbeat = None
                    return
            try:
                self.renew()
            except Exception:  # the database is away: the next beat tries again (the lease still runs)
                log.exception("outbox lease renewal failed")

    # --- delivering ---------------------------------------------------------------------------------------

    def deliver(self, item: Claimed) -> bool:
        attempt = _Attempt(self, item)
        token = _CURRENT.set(attempt)
        try:
            self.handlers[item.topic](item.key, item.payload)
        except LeaseLost:
            with self._held.lock:
                self._held.pks.discard(item.pk)
            log.warning("outbox %s %s: lease lost before the request, left to its new holder", item.topic, item.key)
            return False
        except Exception as exc:  # any failure of a receiver means: try again later
            attempts = item.attempts + 1  # the request this handler made (or tried to)
            dead = attempts >= item.max_attempts
            values: dict[str, Any] = {"status": "dead" if dead else "pending", "last_error": str(exc)[:2000],
                                      "attempts": attempts,
                                      "next_attempt_at": datetime.now(UTC) + backoff(attempts, self.backoff_base)}
            self._finish(item.pk, values)
            log.warning("outbox %s %s attempt %d failed%s", item.topic, item.key, attempts,
                        " (dead-lettered)" if dead else "")
            return False
        finally:
            _CURRENT.reset(token)
        self._finish(item.pk, {"status": "done", "last_error": None, "attempts": item.attempts + 1})
        return True

    def partition_of(self, item: Claimed) -> str:
        partition = self.partitions.get(item.topic)
        return partition(item.key, item.payload) if partition is not None else item.topic

    def _held_elsewhere(self) -> dict[str, int]:
        """Partition -> the earliest row of it another dispatcher holds now (partitioned topics only)."""
        now = datetime.now(UTC)
        with self.engine.connect() as conn:
            rows = conn.execute(select(OUTBOX.c.pk, OUTBOX.c.topic, OUTBOX.c.key, OUTBOX.c.payload).where(
                OUTBOX.c.status == "delivering", OUTBOX.c.next_attempt_at > now,
                OUTBOX.c.topic.in_(list(self.partitions)),
                or_(OUTBOX.c.lease_owner.is_(None), OUTBOX.c.lease_owner != self.owner))).all()
        earliest: dict[str, int] = {}
        for r in rows:
            key = self.partition_of(Claimed(r.pk, r.topic, r.key, r.payload, 0, 0))
            earliest[key] = min(earliest.get(key, r.pk), r.pk)
        return earliest

    def _sort_out(self, claimed: list[Claimed]) -> list[str]:
        """Queue the claimed rows by partition; the partitions that need a lane now. A row joins the queue of a
        partition a lane here is delivering already (up to QUEUED rows); it goes back, due shortly, when the
        queue is full or another dispatcher holds an earlier row of its partition: a partition is never
        delivered by two lanes or two processes at once, so its order holds."""
        groups: dict[str, list[Claimed]] = {}
        for item in claimed:
            groups.setdefault(self.partition_of(item), []).append(item)
        elsewhere = self._held_elsewhere() if any(i.topic in self.partitions for i in claimed) else {}
        back: list[Claimed] = []
        fresh: list[str] = []
        with self._busy_lock:
            for key, items in groups.items():
                queue = self._queues.get(key)
                if elsewhere.get(key, items[0].pk) < items[0].pk or (queue is not None and len(queue) >= QUEUED):
                    back.extend(items)
                elif queue is not None:
                    queue.extend(items)
                else:
                    self._queues[key] = deque(items)
                    fresh.append(key)
        self.release(back, datetime.now(UTC) + HAND_BACK)
        return fresh

    def _next(self, key: str) -> Claimed | None:
        with self._busy_lock:
            queue = self._queues[key]
            if queue:
                return queue.popleft()
            del self._queues[key]  # empty: the partition is free (a later claim starts a lane for it)
            return None

    def _drop(self, key: str) -> list[Claimed]:
        with self._busy_lock:
            return list(self._queues.pop(key, ()))

    def _deliver_partition(self, key: str) -> int:
        delivered = 0
        try:
            while (item := self._next(key)) is not None:
                if self._stop.is_set():  # shutting down: what was not started goes back at once
                    self.release([item, *self._drop(key)])
                    break
                if self.deliver(item):
                    delivered += 1
                    continue
                # Keep the order: the rest waits for the failed row (due with it, claimed after it by pk).
                self.release(self._drop(key), datetime.now(UTC) + backoff(item.attempts + 1, self.backoff_base))
                break
        except BaseException:
            self.release(self._drop(key))
            raise
        finally:
            self._wake.set()  # a lane is free: the loop may claim again
        return delivered

    def _submit(self, keys: list[str]) -> list[Future[int]]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="outbox-lane")
        return [self._pool.submit(self._deliver_partition, key) for key in keys]

    def run_once(self) -> int:
        """Claim what is due and deliver it, waiting for every lane; returns how many were delivered."""
        keys = self._sort_out(self.claim())
        if len(keys) <= 1 or self.lanes == 1:
            return sum(self._deliver_partition(key) for key in keys)
        return sum(future.result() for future in self._submit(keys))

    def _start_some(self) -> int:
        """The background loop's step: claim while a lane is free and hand new partitions to the lanes
        without waiting for them (a hanging endpoint holds its own lane only); how many rows it claimed."""
        with self._busy_lock:
            if len(self._queues) >= self.lanes:
                return 0
        claimed = self.claim()
        self._submit(self._sort_out(claimed))
        return len(claimed)

    def wake(self) -> None:
        self._wake.set()

    def start(self, poll_seconds: float = 1.0) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self._wake.clear()
                started = 0
                try:
                    started = self._start_some()
                except FhirError as exc:  # a suspended hospital's transactions are refused: its rows wait
                    log.debug("outbox: %s", exc)
                except Exception:
                    log.exception("outbox dispatch failed")
                if started:
                    continue  # more may be due: look again at once
                self._wake.wait(poll_seconds)

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="outbox-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        """Stop the loop, the lanes (each after its current row) and the heartbeat. ``release``: hand back
        at once the rows claimed and not started (a clean shutdown); else they wait for their lease."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._busy_lock:
            self._queues.clear()  # what cancelled lanes left: still held, handed back below or left to lapse
        if release:
            with self._held.lock:
                pks = list(self._held.pks)
                self._held.pks.clear()
            if pks:
                with self.engine.connect() as conn:
                    conn.execution_options(fhir_write=True)
                    with conn.begin():
                        conn.execute(update(OUTBOX).where(OUTBOX.c.pk.in_(pks), OUTBOX.c.lease_owner == self.owner,
                                                          OUTBOX.c.status == "delivering")
                                     .values(status="pending", lease_owner=None, next_attempt_at=datetime.now(UTC)))
