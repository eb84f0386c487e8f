"""Running jobs (bulk $export/$import, asynchronous $reindex): ``run_job`` (claim, run, record the outcome)
and the in-process runner of the embedded default (a small thread pool; celery workers call ``run_job``
in production)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from fhir_server.jobs.bulk_export import ExportRun
from fhir_server.jobs.bulk_import import ImportRun
from fhir_server.jobs.reindex_job import ReindexRun
from fhir_server.jobs.store import JobStore
from fhir_server.tenancy.engines import TenantUnavailable

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.repository import Repository

log = logging.getLogger(__name__)


def job_store(server: FhirServer) -> JobStore:
    return JobStore(server.engine, server.settings.job_lease_seconds)


def run_job(server: FhirServer, job_id: str, jobs: JobStore | None = None) -> str | None:
    """Claim and run one job; returns its final status, or None when another runner holds it."""
    jobs = jobs or job_store(server)
    job = jobs.claim(job_id)
    if job is None:
        return None
    s = server.settings

    def read(work: Callable[[Repository], Any]) -> Any:
        return server.uow.run(work, write=False, access=job.access)

    def write(work: Callable[[Repository], Any]) -> Any:
        return server.uow.run(work, write=True, access=job.access)

    try:
        if job.kind == "export":
            finished = ExportRun(read, jobs, job, server.binary.store, page_size=s.bulk_page_size,
                                 file_resources=s.bulk_file_resources, expiry_seconds=s.bulk_expiry_seconds).run()
        elif job.kind == "reindex":
            finished = ReindexRun(write, jobs, job, server.search.reindex, expiry_seconds=s.bulk_expiry_seconds).run()
        else:
            finished = ImportRun(read, write, jobs, job, server.binary.store,
                                 expiry_seconds=s.bulk_expiry_seconds, settings=s).run()
    except Exception as exc:  # the job fails; the status URL answers 500 with this (no stack trace)
        log.exception("bulk job %s failed", job.id)
        jobs.fail(job, getattr(exc, "message", None) or type(exc).__name__)
        return "failed"
    return "completed" if finished else "stopped"


class ThreadRunner:
    """Embedded default: jobs run on threads of the server process. At start it also picks up jobs that a
    previous run of the process left queued or half done (their checkpoints say where to go on)."""

    def __init__(self, server: FhirServer, threads: int = 2) -> None:
        self.server = server
        self.jobs = job_store(server)
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def submit(self, _job_id: str) -> None:
        self._wake.set()  # the job row commits with the kick-off; the loop claims it once it is visible

    def _run(self, job_id: str) -> None:
        try:
            run_job(self.server, job_id, self.jobs)
        finally:
            with self._lock:
                self._running.discard(job_id)

    def _scan(self) -> bool:
        found = False
        try:
            due = self.jobs.due(stale=True)
        except TenantUnavailable:  # a suspended hospital's jobs wait, untouched, until it is active again
            return False
        for job_id in due:
            with self._lock:
                if job_id in self._running or self._pool is None:
                    continue
                self._running.add(job_id)
            found = True
            self._pool.submit(self._run, job_id)
        return found

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="bulk-job")
        self._stop.clear()
        self.jobs.stopping.clear()

        def loop() -> None:
            try:
                self._scan()  # first look: jobs a previous run of this process left queued or half done
            except Exception:
                log.exception("bulk job scan failed")
            pending, idle = 0, 0
            while not self._stop.is_set():
                woken = self._wake.wait(self.server.settings.job_poll_seconds)
                self._wake.clear()
                idle += 1
                # Now and then: a kick-off whose nudge came before its commit was visible, or a job whose
                # runner stopped renewing its lease (died, or missed the first look at start).
                if idle >= 30 and not woken:
                    idle = 0
                    try:
                        self._scan()
                    except Exception:
                        log.exception("bulk job scan failed")
                if woken:
                    pending = 20  # the kick-off may not have committed yet: keep looking for a little while
                if pending:
                    try:
                        if self._scan():
                            pending = 0
                        else:
                            pending -= 1
                    except Exception:
                        log.exception("bulk job scan failed")
                    if pending:
                        self._stop.wait(0.05)

        self._loop = threading.Thread(target=loop, name="bulk-jobs", daemon=True)
        self._loop.start()

    def stop(self) -> None:
        self._stop.set()
        self.jobs.stopping.set()
        self._wake.set()
        if self._loop is not None:
            self._loop.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
