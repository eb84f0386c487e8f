"""Outbox dispatcher: delivers outbox rows at least once, with exponential backoff and a dead-letter status.

Leases. A dispatcher claims rows (status ``delivering``, ``lease_owner`` = itself, ``next_attempt_at`` =
now + a short lease) and a heartbeat thread renews the lease of every row it holds while it works, however
long a receiver takes to answer; so no other dispatcher claims a row in flight, and a dispatcher that dies
(kill -9, power) leaves its rows silent only until the short lease lapses. A row is finished only by the
dispatcher still holding it.

Attempts. ``attempts`` counts requests actually made, not claims: a handler's HTTP client calls
``count_attempt`` just before it sends (a windowed topic's window is counted in one statement as it
leaves: outbox_window.py), which records the attempt before anything
reaches the receiver; a handler that does not counts when it returns or raises. A crash between claim and
request therefore costs no attempt, and a row is dead-lettered only after ``max_attempts`` real attempts.

Concurrency. Rows are delivered in ``lanes`` threads, one partition per lane at a time (several of its
rows in flight at once where the topic says which may overlap: outbox_window.py): a partition (by
default the topic; subscriptions partition by subscription) is delivered in outbox order, so a Backport
subscription's event numbers reach its endpoint in order while other subscriptions go in parallel. A failure
hands the rest of its partition back (pending, due with the failed row), so the order holds and a dead
endpoint costs one timeout, not one per row. The lanes (and the heartbeat) are one pool per process shared
by every tenant's dispatcher (outbox_lanes.py).

Batches. The rows of one partition claimed together are a ``Batch``: a handler may read once what they
share (``current_batch()``: the subscription, its events). Delivered rows are finished together: in the
transaction that counts the next row's attempt, or when the lane's turn ends, so a row costs one
transaction, not two. A crash before that finish re-sends those rows (handlers are idempotent by key).

Handlers must be idempotent by the row's ``key`` (a crash after the request re-sends it). This in-process
dispatcher serves the embedded default; a ``fhir-server worker`` runs the same one (fhir_server/jobs).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.pool import StaticPool

from fhir_server.errors import FhirError
from fhir_server.storage.models import OUTBOX
from fhir_server.storage.outbox_attempt import (  # noqa: F401  (handlers import these from here)
    _CURRENT,
    Batch,
    Claimed,
    Done,
    LeaseLost,
    _Attempt,
    attempt_number,
    count_attempt,
    current_batch,
    last_attempt,
)
from fhir_server.storage.outbox_lanes import TURN, TURN_SECONDS, Lanes
from fhir_server.storage.outbox_rows import Held, LeasedRows
from fhir_server.storage.outbox_window import Windowed, deliver_window

log = logging.getLogger(__name__)

OutboxHandler = Callable[[str, dict[str, Any]], None]  # (key, payload); raise to retry
Partition = Callable[[str, dict[str, Any]], str]  # (key, payload) -> the ordered stream the row belongs to


HAND_BACK = timedelta(milliseconds=500)  # rows of a partition busy elsewhere are due again this soon
QUEUED = 500  # rows a busy partition may have waiting in this process (beyond: handed back)
# Woken by every write, a dispatcher claims at most this often (unless a full batch says a backlog waits):
# the notifications of several writes are then claimed together, and each subscription's rows share one
# read and one count, instead of costing a claim and a read per write (what made live delivery 5x the
# CPU of a backlog's). The first write after a quiet spell is claimed at once.
LINGER_SECONDS = 0.2


def backoff(attempts: int, base: float = 1.0, cap: float = 3600.0) -> timedelta:
    return timedelta(seconds=min(cap, base * 2 ** max(attempts - 1, 0)))


class OutboxDispatcher(LeasedRows):
    def __init__(self, engine: Engine, *, lease: timedelta = timedelta(seconds=10), batch: int = 200,
                 backoff_base: float = 1.0, lanes: int | Lanes = 8) -> None:
        """``lanes``: how many threads deliver (a pool of its own), or the process's shared ``Lanes``."""
        self.engine = engine
        self.handlers: dict[str, OutboxHandler] = {}
        self.partitions: dict[str, Partition] = {}
        self.windows: dict[str, Windowed] = {}
        self.lease = lease
        self.batch = batch
        self.backoff_base = backoff_base
        # One shared in-memory SQLite connection (StaticPool) cannot hold two transactions at once.
        single = isinstance(engine.pool, StaticPool)
        self.shared = isinstance(lanes, Lanes) and not single
        self.pool: Lanes = lanes if isinstance(lanes, Lanes) and not single else \
            Lanes(1 if single else lanes if isinstance(lanes, int) else lanes.size)
        self.lanes = 1 if single else self.pool.size
        # Unique per dispatcher object (a restarted process is a new owner): host and pid say whose it was.
        self.owner = f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._held = Held()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._futures: set[Future[int]] = set()  # this dispatcher's turns on the lanes
        # Partitions a lane of this dispatcher is delivering -> the rows still to go, in order (newly claimed
        # rows of a busy partition join its queue: the lane goes on with them).
        self._queues: dict[str, deque[Claimed]] = {}
        self._busy_lock = threading.Lock()
        self.linger = LINGER_SECONDS
        self._next_claim = 0.0  # monotonic: a wake before this waits for it (linger)

    def claim(self) -> list[Claimed]:
        claimed = super().claim()
        if claimed:
            self.pool.holding(self)  # the heartbeat renews this dispatcher's rows from now on
        return claimed

    def register(self, topic: str, handler: OutboxHandler, *, partition: Partition | None = None) -> None:
        """``partition``: rows in the same partition are delivered one after another in outbox order (default:
        the whole topic); different partitions go in parallel."""
        self.handlers[topic] = handler
        if partition is not None:
            self.partitions[topic] = partition

    def register_window(self, topic: str, handler: OutboxHandler, sender: Windowed, *,
                        partition: Partition | None = None) -> None:
        """Rows of ``topic`` go several at a time from a lane (outbox_window.py); ``handler`` delivers one
        alone (the same request as ``sender`` would make)."""
        self.register(topic, handler, partition=partition)
        self.windows[topic] = sender

    # --- delivering ---------------------------------------------------------------------------------------

    def deliver(self, item: Claimed, done: Done | None = None) -> bool:
        """Deliver one row. ``done``: the lane's delivered rows not yet finished (this one joins them on
        success); without it the row is finished at once."""
        pending: Done = [] if done is None else done
        attempt = _Attempt(self, item, pending)
        token = _CURRENT.set(attempt)
        try:
            self.handlers[item.topic](item.key, item.payload)
        except LeaseLost:
            with self._held.lock:
                self._held.pks.discard(item.pk)
            log.warning("outbox %s %s: lease lost before the request, left to its new holder", item.topic, item.key)
            return False
        except Exception as exc:  # any failure of a receiver means: try again later
            self._failed(item, pending, exc)
            return False
        finally:
            _CURRENT.reset(token)
        pending.append((item, attempt.counted))
        if done is None:
            self._write(pending)
        return True

    def _failed(self, item: Claimed, done: Done, exc: BaseException) -> None:
        """The row's attempt failed: due again after its backoff, or dead-lettered after its last."""
        attempts = item.attempts + 1  # the request this handler made (or tried to)
        dead = attempts >= item.max_attempts
        values: dict[str, Any] = {"status": "dead" if dead else "pending", "last_error": str(exc)[:2000],
                                  "attempts": attempts,
                                  "next_attempt_at": datetime.now(UTC) + backoff(attempts, self.backoff_base)}
        self._finish(done, item.pk, values)
        log.warning("outbox %s %s attempt %d failed%s", item.topic, item.key, attempts,
                    " (dead-lettered)" if dead else "")

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
        for key, items in groups.items():
            batch = Batch()
            batch.items = groups[key] = [replace(item, batch=batch) for item in items]
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

    def _next_of(self, key: str, topic: str) -> Claimed | None:
        """The partition's next row if it is of ``topic`` (a window goes on with it), else None."""
        with self._busy_lock:
            queue = self._queues.get(key)
            if queue and queue[0].topic == topic:
                return queue.popleft()
            return None

    def _put_back(self, key: str, item: Claimed) -> None:
        with self._busy_lock:
            self._queues[key].appendleft(item)

    def _drop(self, key: str) -> list[Claimed]:
        with self._busy_lock:
            return list(self._queues.pop(key, ()))

    def _deliver_partition(self, key: str, turn: int | None = None) -> int:
        """Deliver the partition's queue in order; ``turn``: at most that many rows, then queue again on
        the lanes behind the other partitions (the partition stays this lane's meanwhile: order holds)."""
        delivered = 0
        done: Done = []
        again = False
        ends = time.monotonic() + TURN_SECONDS
        try:
            while turn is None or (delivered < turn and time.monotonic() < ends) or not (again := True):
                if (item := self._next(key)) is None:
                    break
                if self._stop.is_set():  # shutting down: what was not started goes back at once
                    self.release([item, *self._drop(key)])
                    break
                if item.topic in self.windows:
                    sent, failed = deliver_window(self, key, item, done, turn - delivered if turn else 1 << 30)
                    delivered += sent
                    if failed is None:
                        continue
                    item = failed
                elif self.deliver(item, done):
                    delivered += 1
                    continue
                # Keep the order: the rest waits for the failed row (due with it, claimed after it by pk).
                self.release(self._drop(key), datetime.now(UTC) + backoff(item.attempts + 1, self.backoff_base))
                break
        except BaseException:
            self.release(self._drop(key))
            raise
        finally:
            if done:
                self._write(done)
            if again and not self._stop.is_set():
                self._submit([key])
            elif again:
                self.release(self._drop(key))
            else:
                self.wake()  # a lane is free: the loop may claim again
        return delivered

    def _submit(self, keys: list[str]) -> list[Future[int]]:
        futures = [self.pool.submit(self._deliver_partition, key, TURN) for key in keys]
        with self._busy_lock:
            self._futures.update(futures)
        for future in futures:
            future.add_done_callback(self._turn_ended)
        return futures

    def _turn_ended(self, future: Future[int]) -> None:
        with self._busy_lock:
            self._futures.discard(future)

    def run_once(self) -> int:
        """Claim what is due and deliver it, waiting for every lane; returns how many were delivered."""
        keys = self._sort_out(self.claim())
        if len(keys) <= 1 or self.lanes == 1:
            return sum(self._deliver_partition(key) for key in keys)
        futures = [self.pool.submit(self._deliver_partition, key) for key in keys]  # whole partitions
        return sum(future.result() for future in futures)

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
        if self.shared:
            self.pool.wake()

    def woken(self) -> bool:
        return self._wake.is_set()

    def claim_at(self) -> float:
        """When (monotonic) a wake may claim again: at once after a quiet spell, else after the linger."""
        return self._next_claim

    def step(self) -> int:
        """The polling loop's step: claim and start what is due; how many rows it claimed."""
        self._wake.clear()
        if self._stop.is_set():
            return 0
        try:
            claimed = self._start_some()
            if claimed:  # a full batch: a backlog, claim again at once; else let the next writes' gather
                self._next_claim = time.monotonic() + (self.linger if claimed < self.batch else 0.0)
            return claimed
        except FhirError as exc:  # a suspended hospital's transactions are refused: its rows wait
            log.debug("outbox: %s", exc)
        except Exception:
            log.exception("outbox dispatch failed")
        return 0

    def start(self, poll_seconds: float = 1.0) -> None:
        """Poll every ``poll_seconds`` (and at once when woken). On shared lanes the process's one scheduler
        thread polls every tenant's dispatcher; a dispatcher with lanes of its own has its own loop."""
        self._stop.clear()
        if self.shared:
            self.pool.serve(self, poll_seconds)
            return

        def loop() -> None:
            while not self._stop.is_set():
                if (lingering := self._next_claim - time.monotonic()) > 0:
                    self._stop.wait(lingering)
                if self.step():
                    continue  # more may be due: look again (after the linger unless a backlog waits)
                self._wake.wait(poll_seconds)

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
        if self.shared:  # the lanes serve other tenants: wait for this one's turns only
            self.pool.leave(self)
            with self._busy_lock:
                futures = list(self._futures)
            for future in futures:
                future.cancel()
            for future in futures:
                if not future.cancelled():
                    try:
                        future.result(timeout=30)
                    except Exception:
                        log.exception("outbox lane failed while stopping")
        else:
            self.pool.shutdown()
        self.pool.forget(self)
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
