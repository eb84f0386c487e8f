"""The celery application (broker from FHIR_BROKER_URL) and the tasks a ``fhir-server worker`` runs.

Tasks carry only ids: the state lives in the database (outbox rows with leases and backoff, bulk jobs
with leases and checkpoints), so a lost or repeated message costs nothing. The broker only says "look
now". Each worker runs one outbox dispatcher (storage/outbox.py: parallel lanes, leases it renews while it
works) that a sweep message wakes and that polls every FHIR_JOB_POLL_SECONDS for retries that came due and
rows whose dispatcher died; a ticker thread looks every FHIR_JOB_POLL_SECONDS for jobs whose runner died.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta
from typing import Any

from celery import Celery

from fhir_server.config import Settings
from fhir_server.tenancy.model import DEFAULT

log = logging.getLogger(__name__)

OUTBOX_SWEEP = "fhir.outbox.sweep"
BULK_RUN = "fhir.bulk.run"


def make_celery(settings: Settings) -> Celery:
    if not settings.broker_url:
        raise ValueError("FHIR_BROKER_URL is not set: the embedded default runs jobs inside `serve`")
    app = Celery("fhir_server", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json", accept_content=["json"], task_ignore_result=True,
        worker_prefetch_multiplier=1,  # a long export must not hold other messages hostage
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        task_default_queue=settings.broker_queue,
    )
    return app


PUBLISH_TIMEOUT = 1.0  # seconds: a nudge that cannot go out by then is dropped (workers poll anyway)


class CeleryClient:
    """What the API process does with celery: nudge workers (it never runs jobs itself), off the request
    path: the nudges go out from a background thread (fhir_server/jobs/nudge.py), each publish bounded by
    PUBLISH_TIMEOUT and never retried."""

    def __init__(self, settings: Settings) -> None:
        from fhir_server.jobs.nudge import Nudger

        self.app = make_celery(settings)
        self.app.conf.update(
            broker_connection_timeout=PUBLISH_TIMEOUT, broker_connection_retry=False,
            broker_connection_max_retries=0,
            # redis: connect and every reply (a frozen Redis accepts the connection, then never answers)
            broker_transport_options={"socket_timeout": PUBLISH_TIMEOUT, "socket_connect_timeout": PUBLISH_TIMEOUT,
                                      "max_retries": 0},
        )
        self.nudger = Nudger(self._send_sweep, self._send_job)
        self.sweep = self.nudger.sweep
        self.submit = self.nudger.submit

    def _send_sweep(self) -> None:
        self.app.send_task(OUTBOX_SWEEP, retry=False)

    def _send_job(self, job_id: str) -> None:
        self.app.send_task(BULK_RUN, args=[job_id], countdown=0.2, retry=False)  # after the kick-off commits

    def stop(self) -> None:
        self.nudger.stop()


def run_worker(settings: Settings, concurrency: int | None = None) -> None:
    """``fhir-server worker``: celery's worker (thread pool) with our tasks, plus the ticker."""
    from fhir_server.jobs.runner import job_store, run_job
    from fhir_server.jobs.topics import install_outbox_topics
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.outbox import OutboxDispatcher

    app = make_celery(settings)
    server = FhirServer(settings)
    dispatcher = OutboxDispatcher(server.engine, lease=timedelta(seconds=settings.outbox_lease_seconds),
                                  lanes=settings.outbox_lanes)
    install_outbox_topics(server, dispatcher)  # the same topics as the API process
    if settings.tenant == DEFAULT:  # patient shares' Consents catch up from the default tenant's outbox
        from fhir_server.tenancy.sharing import install_catch_up
        from fhir_server.tenancy.stacks import Tenants, TenantStack

        install_catch_up(Tenants(settings, TenantStack(DEFAULT, server, dispatcher, None)))
    jobs = job_store(server)

    @app.task(name=OUTBOX_SWEEP, ignore_result=True)
    def sweep() -> None:
        # The process's own dispatcher delivers (its lanes in parallel, each subscription in order, leases
        # renewed while it works); a nudge only makes it look now rather than at its next poll.
        dispatcher.wake()

    @app.task(name=BULK_RUN, ignore_result=True)
    def bulk_run(job_id: str) -> str | None:
        return run_job(server, job_id, jobs)

    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(settings.job_poll_seconds):
            try:
                for job_id in jobs.due():
                    app.send_task(BULK_RUN, args=[job_id])
            except Exception:
                log.exception("worker tick failed")

    threading.Thread(target=tick, name="fhir-worker-tick", daemon=True).start()
    argv: list[Any] = ["worker", "--pool=threads", f"--concurrency={concurrency or settings.worker_concurrency}",
                       "--loglevel=INFO", "--without-gossip", "--without-mingle",
                       f"--hostname=fhir-{socket.gethostname()}-{os.getpid()}"]
    dispatcher.start(settings.job_poll_seconds)  # polls for retries that came due and rows whose lease lapsed
    try:
        app.worker_main(argv)
    finally:
        stop.set()
        jobs.stopping.set()
        dispatcher.stop()  # rows claimed and not yet started go back at once
