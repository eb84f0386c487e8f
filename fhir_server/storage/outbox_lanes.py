"""The outbox's lane threads and lease heartbeat, one set per process whatever the number of tenants.

Every tenant has its own outbox dispatcher (its schema or file); they all hand their partitions to one
``Lanes``: at most ``size`` threads deliver in this process (FHIR_OUTBOX_LANES), one heartbeat thread
renews the leases of every dispatcher that holds rows, and one scheduler thread polls every dispatcher
(when it is woken, or at its poll interval) instead of a loop thread per tenant. A partition runs a
bounded turn on a lane and then queues again behind the others (FIFO), so a busy hospital's backlog cannot
keep a quiet one's notifications waiting for its whole backlog: lanes go round the partitions with work.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fhir_server.storage.outbox import OutboxDispatcher

log = logging.getLogger(__name__)

TURN = 20  # rows a partition delivers on a lane before it queues again behind the others ...
TURN_SECONDS = 0.25  # ... or this long (a slow endpoint's turn is short in rows)
SWITCH_INTERVAL_SECONDS = 0.001  # the GIL's, in a process with lanes (see submit)


class Lanes:
    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        # Dispatchers holding rows (the heartbeat renews them); weak: a dropped tenant is not kept alive.
        self._holding: weakref.WeakSet[OutboxDispatcher] = weakref.WeakSet()
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()
        # Dispatchers polled by the one scheduler thread -> (poll seconds, when next due, monotonic).
        self._polled: weakref.WeakKeyDictionary[OutboxDispatcher, tuple[float, float]] = weakref.WeakKeyDictionary()
        self._scheduler: threading.Thread | None = None
        self._due = threading.Event()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        with self._lock:
            if self._pool is None:
                # A request thread back from a database round trip waits for the GIL up to the switch
                # interval while lanes run Python: at the default 5 ms a write's ~30 round trips cost it
                # 150 ms, and writers crawl while notifications go out. 1 ms, as the audit writer sets it.
                sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_SECONDS))
                self._pool = ThreadPoolExecutor(self.size, thread_name_prefix="outbox-lane")
            return self._pool.submit(fn, *args)

    def holding(self, dispatcher: OutboxDispatcher) -> None:
        """``dispatcher`` holds rows now: renew its leases until it holds none."""
        with self._lock:
            self._holding.add(dispatcher)
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._stop.clear()
                self._heartbeat = threading.Thread(target=self._beat, name="outbox-heartbeat", daemon=True)
                self._heartbeat.start()

    def serve(self, dispatcher: OutboxDispatcher, poll_seconds: float) -> None:
        """Poll ``dispatcher`` every ``poll_seconds`` and whenever it is woken, from the one scheduler thread."""
        with self._lock:
            self._polled[dispatcher] = (poll_seconds, 0.0)
            if self._scheduler is None or not self._scheduler.is_alive():
                self._stop.clear()
                self._scheduler = threading.Thread(target=self._schedule, name="outbox-scheduler", daemon=True)
                self._scheduler.start()
        self._due.set()

    def leave(self, dispatcher: OutboxDispatcher) -> None:
        with self._lock:
            self._polled.pop(dispatcher, None)

    def wake(self) -> None:
        self._due.set()

    def _schedule(self) -> None:
        """Round the dispatchers that are woken or due, oldest first each round; sleep until the next is due."""
        while not self._stop.is_set():
            self._due.clear()
            with self._lock:
                polled = list(self._polled.items())
                if not polled:
                    self._scheduler = None
                    return
            now = time.monotonic()
            for dispatcher, (poll, due) in polled:
                if (dispatcher.woken() and now >= dispatcher.claim_at()) or now >= due:
                    started = dispatcher.step()
                    with self._lock:
                        if dispatcher in self._polled:  # (not left meanwhile)
                            self._polled[dispatcher] = (poll, dispatcher.claim_at() if started
                                                        else time.monotonic() + poll)
            with self._lock:
                soonest = min((min(due, d.claim_at()) if d.woken() else due for d, (_p, due) in self._polled.items()),
                              default=time.monotonic() + 1)
            self._due.wait(max(0.0, soonest - time.monotonic()))

    def forget(self, dispatcher: OutboxDispatcher) -> None:
        """A stopped dispatcher: what it still holds lapses with its lease (no more renewals)."""
        with self._lock:
            self._holding.discard(dispatcher)

    def _beat(self) -> None:
        """Renew three times per (shortest) lease while anything is held; end when nothing is (the next
        claim starts it again)."""
        while True:
            with self._lock:
                dispatchers = list(self._holding)
                if not dispatchers:
                    self._heartbeat = None
                    return
            interval = max(min(d.lease.total_seconds() for d in dispatchers) / 3, 0.05)
            if self._stop.wait(interval):
                return
            for dispatcher in dispatchers:
                try:
                    if not dispatcher.renew():
                        with self._lock:
                            if not dispatcher.holds():
                                self._holding.discard(dispatcher)
                except Exception:  # the database is away: the next beat tries again (the lease still runs)
                    log.exception("outbox lease renewal failed")

    def shutdown(self) -> None:
        """Stop the heartbeat and the lanes (each after its current row; turns not started are dropped:
        their dispatchers hand the rows back)."""
        self._stop.set()
        self._due.set()
        with self._lock:
            pool, self._pool = self._pool, None
            heartbeat = self._heartbeat
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if heartbeat is not None:
            heartbeat.join(timeout=10)
