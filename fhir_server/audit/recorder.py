"""Writes AuditEvents: in the caller's transaction (writes), or through a bounded in-process queue that a
background thread drains in batches (reads, failures, sign-ins), as HAPI and Medplum do.

A read pays for one queue put; the thread builds the events (patients, codes) and writes up to BATCH of
them in one unit of work, waiting up to LINGER_SECONDS after the first for more to join it: one event per
unit of work cost ~2.5 ms CPU, fifty ~0.55 ms each. When the queue is full the caller writes its event
itself (back-pressure, never a silent drop). ``close`` (app shutdown, interpreter exit) drains what is queued.

Crash window: a process killed hard (SIGKILL, power loss, OOM) loses the events still queued, i.e. those
of reads answered in the last LINGER_SECONDS plus any backlog (at most MAX_QUEUED). Writes never: their
AuditEvent is in their own transaction. ``FHIR_AUDIT_BACKGROUND=false`` closes the window: each read then
writes its AuditEvent before it is answered (its own unit of work, ~2.5 ms CPU more per read).

Server-built AuditEvents skip StructureDefinition validation (``trusted``): tests/unit/test_audit_events.py
validates every shape they take against the base profile instead.
"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from fhir_server.audit.events import Record, audit_event
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository
from fhir_server.storage.uow import UnitOfWork

log = logging.getLogger(__name__)
BATCH = 500
MAX_QUEUED = 10_000
PUT_TIMEOUT_SECONDS = 0.5
LINGER_SECONDS = 0.1  # how long the writer waits for a batch to fill: added to the crash window
SWITCH_INTERVAL_SECONDS = 0.001
_STOP = object()
AUDIT_TRAIL = as_system("audit trail: AuditEvents are the server's own record")
# Set while the recorder itself writes an AuditEvent: the write is not audited again (no loop) and the
# append-only guard lets it through.
RECORDING: ContextVar[bool] = ContextVar("fhir_audit_recording", default=False)


@contextmanager
def recording() -> Iterator[None]:
    token = RECORDING.set(True)
    try:
        yield
    finally:
        RECORDING.reset(token)


class AuditRecorder:
    def __init__(self, uow: UnitOfWork, *, max_queued: int = MAX_QUEUED, batch: int = BATCH,
                 background: bool = True, linger: float = LINGER_SECONDS,
                 put_timeout: float = PUT_TIMEOUT_SECONDS) -> None:
        self.uow = uow
        self.batch = batch
        self.background = background  # False: every event is written before the caller goes on
        self.linger = linger
        self.put_timeout = put_timeout
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queued)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.written = 0  # events written by the background thread (tests, metrics)
        self.failed = 0

    # --- in the caller's transaction --------------------------------------------------------------------

    def write_now(self, repo: Repository, record: Record) -> None:
        """Add the event to ``repo``'s transaction: it commits, or rolls back, with the change it records."""
        with repo.acting_as(AUDIT_TRAIL), recording():  # the server's own write, whatever the caller may do
            repo.create("AuditEvent", audit_event(record), trusted=True)

    # --- queued ------------------------------------------------------------------------------------------

    def record(self, record: Record) -> None:
        if not self.background:
            self._write([record])
            return
        self._start()
        try:
            self._queue.put(record, timeout=self.put_timeout)
        except queue.Full:  # the writer is behind: this caller writes its own event rather than drop it
            self._write([record])

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued event is written (tests; shutdown)."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("audit events still queued")
                self._queue.all_tasks_done.wait(remaining)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._closing.set()
            self._queue.put(_STOP)
            thread.join(timeout=30)

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                # A request arriving while the writer works through a batch waits for the GIL up to the
                # switch interval (5 ms by default): read p95 with audit on rose from 1.8 to 8 ms. 1 ms
                # bounds that wait; the price, more frequent switches between busy threads, is small.
                sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_SECONDS))
                self._closing.clear()
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()
                atexit.register(self.close)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._queue.task_done()
                return
            # Let a batch gather: a plain wait, not a get per event, so that a read does not wake this
            # thread (and hand it the GIL) each time it queues one; ``close`` cuts the wait short.
            if self._queue.qsize() < self.batch:  # a full batch is already waiting: no need
                self._closing.wait(self.linger)
            batch = [item]
            stop = False
            while len(batch) < self.batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    self._queue.task_done()
                    break
                batch.append(more)
            try:
                self._write([r for r in batch if isinstance(r, Record)])
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop:
                return

    def _write(self, records: list[Record]) -> None:
        def work(repo: Repository) -> None:
            with recording():
                for record in records:
                    repo.create("AuditEvent", audit_event(record), trusted=True)

        try:
            # also when a request thread writes (queue full): the server's record, not the caller's rights
            self.uow.run(work, write=True, access=AUDIT_TRAIL)
            self.written += len(records)
        except Exception as exc:  # the type only: database errors quote parameters, i.e. audit content
            self.failed += len(records)
            log.error("%d audit events could not be written (%s)", len(records), type(exc).__name__)
