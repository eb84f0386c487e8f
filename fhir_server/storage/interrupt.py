"""Stopping a search's database work: at its deadline (FHIR_SEARCH_TIMEOUT_SECONDS), or when its caller is gone.

A search runs its statements inside ``bounded(conn, seconds)``. One watchdog thread fires deadlines; the web
adapter gives each request an ``Interrupt`` (``cancellable``) and cancels it when the HTTP client disconnects.
Either way the statement running on the connection is stopped where it runs: PostgreSQL gets the protocol's
cancel request (psycopg ``cancel_safe``, sent on a separate connection), SQLite ``sqlite3.interrupt()``; both
are meant to be called from another thread. The search then ends with a 503 OperationOutcome.

This is a client-side deadline rather than PostgreSQL's ``statement_timeout``: read-only units of work run
without BEGIN (``uow.py``), where ``SET LOCAL`` does nothing, and a session-wide SET would cost a round trip
per search and linger on pooled connections; a deadline costs nothing until it fires, bounds the whole search
(page, total, includes), and is the same mechanism a disconnect uses.

A cancel request reaches PostgreSQL asynchronously: one sent as a statement completes could stop the next
statement on that connection, another request's. So a connection that was cancelled is invalidated (closed,
never returned to the pool).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from fhir_server.errors import FhirError, Issue

log = logging.getLogger(__name__)

TIMEOUT = "timeout"  # OperationOutcome issue type: an internal timeout has occurred
DISCONNECTED = "the client disconnected"
# A cancel stops only a statement that is running: one sent while the block builds its next statement in Python
# is lost. So a stopped block is sent another every RESEND_SECONDS until it ends.
RESEND_SECONDS = 0.1


class Interrupt:
    """One request's handle on its running statement: ``cancel`` from any thread stops it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dbapi: Any = None  # the DB-API connection a bounded block is running statements on
        self._scope: object | None = None  # that block (a deadline of an earlier block must not fire on it)
        self._fired: str | None = None  # why this block's statement was stopped
        self.reason: str | None = None  # set for good once the client is gone

    def cancel(self, reason: str = DISCONNECTED) -> None:
        """The caller is gone: stop the running statement, and every later one of this request. Returns at
        once (the event loop calls it): the watchdog thread sends the cancel request."""
        with self._lock:
            self.reason = self.reason or reason
            scope = self._scope
        if scope is not None:
            _WATCHDOG.arm(0, self, scope)

    def expire(self, scope: object) -> bool:
        """The watchdog: stop ``scope``'s statement (its deadline passed, or the request was cancelled);
        False once that block has ended."""
        with self._lock:
            if self._scope is not scope:
                return False
            self._stop(self.reason or TIMEOUT)
            return True

    def _stop(self, reason: str) -> None:
        self._fired = self._fired or reason
        try:
            if hasattr(self._dbapi, "cancel_safe"):  # psycopg
                self._dbapi.cancel_safe(timeout=5.0)
            else:  # sqlite3
                self._dbapi.interrupt()
        except Exception as exc:  # the statement may have ended and the connection closed meanwhile
            log.debug("could not cancel a statement: %s", type(exc).__name__)

    def _enter(self, dbapi: Any, scope: object) -> None:
        with self._lock:
            self._dbapi, self._scope, self._fired = dbapi, scope, None
        with _running_lock:
            _running.add(self)

    def _leave(self) -> str | None:
        with _running_lock:
            _running.discard(self)
        with self._lock:
            fired, self._dbapi, self._scope, self._fired = self._fired, None, None, None
            return fired


_running: set[Interrupt] = set()
_running_lock = threading.Lock()


def running_searches() -> int:
    """How many searches of this process are running their statements now."""
    return len(_running)


_current: ContextVar[Interrupt | None] = ContextVar("fhir_interrupt", default=None)


@contextmanager
def cancellable(interrupt: Interrupt) -> Iterator[None]:
    """Searches run in this block (on this thread) stop when ``interrupt`` is cancelled."""
    token = _current.set(interrupt)
    try:
        yield
    finally:
        _current.reset(token)


@contextmanager
def bounded(conn: Connection, seconds: float) -> Iterator[None]:
    """Run a search's statements on ``conn``: stopped after ``seconds`` (0: never) or when the request's
    Interrupt is cancelled, then a 503 FhirError. A block inside another (``$everything``'s search) joins it."""
    interrupt = _current.get()
    if interrupt is None:
        interrupt = Interrupt()
    elif interrupt.reason is not None:
        log.info("search not started (%s)", interrupt.reason)
        raise _stopped(interrupt.reason, seconds)
    if interrupt._scope is not None:  # nested: the outer block's deadline and connection hold
        yield
        return
    scope = object()
    interrupt._enter(conn.connection.dbapi_connection, scope)
    alarm = _WATCHDOG.arm(seconds, interrupt, scope) if seconds > 0 else None
    fired: str | None = None
    try:
        yield
    except DBAPIError as exc:
        if alarm is not None:
            alarm.active = False
        fired = interrupt._leave()
        if fired is None:
            raise
        _discard(conn, fired)
        raise _stopped(fired, seconds) from exc
    finally:
        if alarm is not None:
            alarm.active = False
        if fired is None:
            fired = interrupt._leave()
            if fired is not None:  # the cancel came as the last statement finished: it may still land
                _discard(conn, fired)
                raise _stopped(fired, seconds)


def _discard(conn: Connection, reason: str) -> None:
    log.info("search stopped (%s); its database connection is discarded", reason)
    if conn.dialect.name == "postgresql":  # a late cancel request would hit whatever ran next on it
        conn.invalidate()


def _stopped(reason: str, seconds: float) -> FhirError:
    if reason == TIMEOUT:
        message = (f"The search ran longer than {seconds:g} s (FHIR_SEARCH_TIMEOUT_SECONDS) and was stopped; "
                   "narrow its criteria")
    else:
        message = f"The search was cancelled: {reason}"
    return FhirError(503, [Issue(TIMEOUT, message)])


class _Alarm:
    __slots__ = ("active", "interrupt", "scope")

    def __init__(self, interrupt: Interrupt, scope: object) -> None:
        self.active = True
        self.interrupt = interrupt
        self.scope = scope


class _Watchdog:
    """One daemon thread that expires the deadlines due; arming one is a heap push."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Alarm]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, interrupt: Interrupt, scope: object) -> _Alarm:
        alarm = _Alarm(interrupt, scope)
        due = time.monotonic() + seconds
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="search-deadlines", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (due, next(self._seq), alarm))
            if self._heap[0][2] is alarm:
                self._cond.notify()
        return alarm

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and not self._heap[0][2].active:  # ended blocks: dropped lazily
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                due, _, alarm = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            if alarm.active and alarm.interrupt.expire(alarm.scope):
                self.arm(RESEND_SECONDS, alarm.interrupt, alarm.scope)


_WATCHDOG = _Watchdog()
