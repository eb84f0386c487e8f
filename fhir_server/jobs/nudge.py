"""The API process's "look now" messages to the workers, sent from one background thread.

A committed write only marks that a nudge is due (a flag, or a job id in a bounded set) and returns: its
latency never depends on the broker's health. The thread publishes what is due with a short timeout and
no retries; a lost nudge costs at most one worker poll (FHIR_JOB_POLL_SECONDS), since the state lives in
the database (outbox rows, bulk job rows) and every worker's ticker looks there again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_PENDING_JOBS = 1000  # beyond this, job nudges are dropped: the workers' ticker finds due jobs anyway
COALESCE_SECONDS = 0.02  # a burst of commits needs one sweep message, not one each


class Nudger:
    def __init__(self, send_sweep: Callable[[], None], send_job: Callable[[str], None]) -> None:
        self._send_sweep = send_sweep
        self._send_job = send_job
        self._lock = threading.Lock()
        self._sweep_due = False
        self._jobs: dict[str, None] = {}  # insertion-ordered set of job ids to nudge
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0  # job nudges dropped because the set was full (observable in tests)

    def sweep(self) -> None:
        """After a commit that may have queued outbox rows: never blocks, never raises."""
        with self._lock:
            self._sweep_due = True
            self._ensure_thread()
        self._wake.set()

    def submit(self, job_id: str) -> None:
        """After a bulk kick-off: never blocks, never raises."""
        with self._lock:
            if len(self._jobs) < MAX_PENDING_JOBS:
                self._jobs[job_id] = None
            else:
                self.dropped += 1
            self._ensure_thread()
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _ensure_thread(self) -> None:  # under self._lock
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="fhir-broker-nudge", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                sweep, self._sweep_due = self._sweep_due, False
                jobs, self._jobs = list(self._jobs), {}
            if sweep:
                self._publish(self._send_sweep)
            for job_id in jobs:
                self._publish(lambda job_id=job_id: self._send_job(job_id))  # type: ignore[misc]
            self._stop.wait(COALESCE_SECONDS)

    @staticmethod
    def _publish(send: Callable[[], None]) -> None:
        try:
            send()
        except Exception:  # the broker is down or frozen: the rows wait in the database for the next poll
            log.warning("could not reach the broker to nudge the workers; their next poll finds the work")
