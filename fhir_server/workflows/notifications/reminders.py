"""The reminder check: a periodic job that records a reminder for each booked appointment starting within
FHIR_NOTIFY_REMINDER_HOURS (24 h), once per appointment and start (the key ``appointment-reminder:
Appointment/ID:START``; a rescheduled appointment is reminded of its new start).

It runs as an outbox topic that re-schedules itself (``not_before`` = now + FHIR_NOTIFY_REMINDER_CHECK_SECONDS),
so whichever process delivers the outbox (the embedded dispatcher, or celery workers) runs it, and a process
that dies mid-check leaves it to be claimed again. ``install`` seeds the chain when none is pending. An
appointment booked or moved to its start inside the window (its history says when) already got its booked /
rescheduled message: no reminder.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from fhir_server.storage.models import OUTBOX
from fhir_server.storage.repository import Repository, instant
from fhir_server.workflows.notifications.record import NOTIFY, record, reminder_notices

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

CHECK_TOPIC = "notification-reminder-check"
PAGE = 200


def _start(appointment: dict[str, Any]) -> datetime | None:
    value = appointment.get("start")
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _booked_at(repo: Repository, appointment_id: str, content: dict[str, Any]) -> datetime:
    """When the appointment was booked at its current start: the oldest of the latest run of versions that
    are booked at that start (other edits since, a comment, do not count)."""
    booked_at, before = datetime.max.replace(tzinfo=UTC), None
    while True:
        rows, more = repo.history("Appointment", appointment_id, before_pk=before, count=20)
        for pk, version in rows:
            before = pk
            old = version.content or {}
            if version.deleted or old.get("status") != "booked" or old.get("start") != content.get("start"):
                return booked_at
            booked_at = _aware(version.last_updated)
        if not more:
            return booked_at


def _remind(repo: Repository, server: FhirServer, appointment_id: str, now: datetime, horizon: datetime) -> int:
    current = repo.current("Appointment", appointment_id, for_update=True)
    content = current.content if current is not None and not current.deleted else None
    start = _start(content) if content else None
    if content is None or content.get("status") != "booked" or start is None or not now < start <= horizon:
        return 0
    window_opened = start - timedelta(hours=server.settings.notify_reminder_hours)
    if _booked_at(repo, appointment_id, content) >= window_opened:
        return 0  # booked or moved to this start inside the window: that message was the reminder
    return sum(record(repo, server.settings, notice, now) is not None
               for notice in reminder_notices(content, server.settings))


def due_reminders(server: FhirServer, now: datetime | None = None) -> int:
    """Record (and queue) the reminders now due; returns how many new ones. Idempotent: run it as often as
    you like, from as many processes as you like."""
    now = now or datetime.now(UTC)
    horizon = now + timedelta(hours=server.settings.notify_reminder_hours)
    params = [("status", "booked"), ("date", f"gt{instant(now)}"), ("date", f"le{instant(horizon)}")]
    ids: list[str] = []

    def page(repo: Repository) -> list[str]:
        return repo.find_ids("Appointment", params, limit=PAGE, after=ids[-1] if ids else None)

    while True:
        found = server.uow.run(page, write=False, access=NOTIFY)
        ids.extend(found)
        if len(found) < PAGE:
            break
    made = 0
    for appointment_id in ids:
        made += server.uow.run(partial(_remind, server=server, appointment_id=appointment_id, now=now,
                                       horizon=horizon), write=True, access=NOTIFY)
    return made


def schedule_check(server: FhirServer, delay: timedelta, *, replacing: str | None = None) -> bool:
    """Queue the next check unless one is already queued (``replacing``: the key of the check now running).
    Returns whether it queued one."""
    def work(repo: Repository) -> bool:
        repo.lock(CHECK_TOPIC)
        queued = repo.execute(select(OUTBOX.c.key).where(
            OUTBOX.c.topic == CHECK_TOPIC, OUTBOX.c.status.in_(("pending", "delivering")))).scalars().all()
        if any(key != replacing for key in queued):
            return False
        at = datetime.now(UTC) + delay
        repo.enqueue(CHECK_TOPIC, f"reminder-check:{instant(at)}", {}, max_attempts=1000, not_before=at)
        return True

    return bool(server.uow.run(work, write=True, access=NOTIFY))


class ReminderCheck:
    """The outbox handler of CHECK_TOPIC: record the due reminders, then queue the next check."""

    def __init__(self, server: FhirServer) -> None:
        self.server = server

    def __call__(self, key: str, _payload: dict[str, Any]) -> None:
        due_reminders(self.server)
        schedule_check(self.server, timedelta(seconds=self.server.settings.notify_reminder_check_seconds),
                       replacing=key)
