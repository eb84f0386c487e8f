"""Notifications (issue 17 item 11): e-mail and SMS to patients when their appointment is booked, rescheduled
or cancelled, a reminder before it, and when their results are ready; docs/workflows/notifications.md.

``install(server)`` (FHIR_WORKFLOWS=notifications) adds a BEFORE_COMMIT hook: a write that causes a message
records it as a Communication and queues its delivery in the outbox, in the write's own transaction (as the
unit of work's last step, so a Bundle's later entries are seen).
``install_delivery(server, dispatcher)`` (from fhir_server/jobs/topics.py, in every process that delivers the
outbox) registers the senders and the reminder check, and seeds the check's chain.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING

from fhir_server.config import Settings
from fhir_server.hooks import HookPoint, WriteEvent
from fhir_server.storage.repository import Repository
from fhir_server.workflows.notifications.delivery import NotificationSender
from fhir_server.workflows.notifications.record import TOPIC, Notice, notices_for, record
from fhir_server.workflows.notifications.reminders import CHECK_TOPIC, ReminderCheck, schedule_check

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.outbox import OutboxDispatcher

log = logging.getLogger(__name__)
NAME = "notifications"


def _record(repo: Repository, *, settings: Settings, notice: Notice) -> None:
    record(repo, settings, notice)


def install(server: FhirServer) -> None:
    settings = server.settings

    def notify(event: WriteEvent, repo: Repository | None) -> None:
        if repo is None or event.resource_type not in ("Appointment", "DiagnosticReport"):
            return
        for notice in notices_for(event, settings):
            # Just before the unit of work commits: a transaction Bundle may create the Patient after the
            # Appointment that names it, or change the patient's preferences in the same Bundle.
            repo.finishers[f"notification:{notice.key}"] = partial(_record, settings=settings, notice=notice)

    server.hooks.register(HookPoint.BEFORE_COMMIT, notify)


def install_delivery(server: FhirServer, dispatcher: OutboxDispatcher) -> None:
    from fhir_server.workflows import enabled_areas

    if NAME not in enabled_areas(server.settings.workflows):
        return
    dispatcher.register(TOPIC, NotificationSender(server))
    dispatcher.register(CHECK_TOPIC, ReminderCheck(server))
    try:
        schedule_check(server, timedelta(0))
    except Exception:  # a store not yet migrated: the next start seeds it (deliveries do not depend on it)
        log.exception("could not queue the first reminder check")
