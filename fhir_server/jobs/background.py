"""Which background machinery the API process uses: celery workers (FHIR_BROKER_URL set), or the
embedded default's in-process outbox dispatcher and bulk job threads (no external service)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.hooks import HookPoint

if TYPE_CHECKING:
    from fhir_server.config import Settings
    from fhir_server.jobs.celery_app import CeleryClient
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.outbox import OutboxDispatcher


class Background:
    def __init__(self, server: FhirServer, dispatcher: OutboxDispatcher, settings: Settings) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.runner = None
        self.client: CeleryClient | None = None
        if settings.broker_url:
            from fhir_server.jobs.celery_app import CeleryClient

            self.client = client = CeleryClient(settings)
            server.hooks.register(HookPoint.AFTER_COMMIT, lambda _event, _repo: client.sweep())
            server.bulk.submit = client.submit
        else:
            from fhir_server.jobs.runner import ThreadRunner

            # Committed writes may have queued outbox work: the dispatcher looks now, not at the next poll.
            server.hooks.register(HookPoint.AFTER_COMMIT, lambda _event, _repo: dispatcher.wake())
            self.runner = ThreadRunner(server, settings.worker_concurrency)
            server.bulk.submit = self.runner.submit

    def start(self) -> None:
        if self.runner is None:
            return
        if self.settings.outbox_dispatcher:
            self.dispatcher.start(self.settings.outbox_poll_seconds)
        self.runner.start()

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        if self.client is not None:
            self.client.stop()
        self.dispatcher.stop()
