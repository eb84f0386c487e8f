"""What a change means for the patient, and its record: one Communication per message, written in the change's
own transaction with the outbox row that will send it (so a message exists if and only if the change commits).

Each message has an idempotency key (the event and the version or start it is about); the Communication's id
is derived from it, and writers of one key are serialised (``Repository.lock``), so one event never makes two
messages, whoever writes concurrently. Opted-out or unreachable patients get a Communication ``not-done``
with its ``statusReason`` and nothing in the outbox.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

from fhir_server.config import Settings
from fhir_server.hooks import WriteEvent
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository
from fhir_server.workflows.notifications.contacts import (
    CHANNELS,
    display_name,
    opted_out,
    preferred_contact,
    preferred_language,
)
from fhir_server.workflows.notifications.templates import TEMPLATES, render
from fhir_server.workflows.notifications.transport import usable_channels

TOPIC = "notification"
# The server records, for every patient a change concerns, the message it sends (or why it sends none): it
# reads the patient's contact preferences and writes Communications whoever made the change.
NOTIFY = as_system("notifications: read the patient's contact preferences, record each message as a Communication")


def _codes(name: str) -> dict[str, Any]:
    return dict(json.loads(resources.files(__package__).joinpath(name).read_text(encoding="utf-8")))


EVENTS = _codes("codesystem-event.json")
REASONS = _codes("codesystem-status-reason.json")
PENDING_APPOINTMENT = ("proposed", "pending", "booked", "waitlist")


@dataclass(frozen=True)
class Notice:
    event: str  # a code of EVENTS
    key: str  # idempotency key: one message per key, ever
    patient_id: str
    about: str  # reference of the Appointment / DiagnosticReport (Communication.reasonReference)
    values: dict[str, str] = field(default_factory=dict)


def communication_id(key: str) -> str:
    return "ntf-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def coding(system: dict[str, Any], code: str) -> dict[str, Any]:
    display = next(c["display"] for c in system["concept"] if c["code"] == code)
    return {"system": system["url"], "code": code, "display": display}


def _patients(resource: dict[str, Any]) -> list[str]:
    ids = []
    for participant in resource.get("participant", []):
        parts = str(participant.get("actor", {}).get("reference", "")).split("/")
        if len(parts) >= 2 and parts[-2] == "Patient" and participant.get("status") != "declined":
            ids.append(parts[-1])
    return ids


def _appointment_values(appointment: dict[str, Any], settings: Settings) -> dict[str, str]:
    when = ""
    if appointment.get("start"):
        start = datetime.fromisoformat(str(appointment["start"]).replace("Z", "+00:00"))
        when = f"{start.astimezone(ZoneInfo(settings.notify_timezone)):%d-%m-%Y %H:%M}"
    with_ = next((str(p["actor"]["display"]) for p in appointment.get("participant", [])
                  if str(p.get("actor", {}).get("reference", "")).split("/")[-2:-1] in (["Practitioner"],
                                                                                      ["PractitionerRole"])
                  and p["actor"].get("display")), "")
    if not with_:
        with_ = next((str(s.get("text") or (s.get("coding") or [{}])[0].get("display", ""))
                      for s in appointment.get("serviceType", [])), "")
    return {"when": when, "with": with_}


def appointment_event(resource: dict[str, Any], previous: dict[str, Any] | None) -> str | None:
    status, before = resource.get("status"), (previous or {}).get("status")
    if status == "booked" and before != "booked":
        return "appointment-booked"
    if status == "booked" and previous and previous.get("start") != resource.get("start"):
        return "appointment-rescheduled"
    if status == "cancelled" and before in PENDING_APPOINTMENT:
        return "appointment-cancelled"
    return None


def notices_for(event: WriteEvent, settings: Settings) -> list[Notice]:
    """The messages one write causes: appointment booked / rescheduled / cancelled, a report made final."""
    resource, version = event.resource, event.version
    if resource is None or version is None:
        return []
    previous = event.previous.content if event.previous and not event.previous.deleted else None
    reference = f"{event.resource_type}/{version.id}"
    if event.resource_type == "Appointment":
        kind = appointment_event(resource, previous)
        if kind is None:
            return []
        values = _appointment_values(resource, settings)
        key = f"{kind}:{reference}/_history/{version.version_id}"
        return [Notice(kind, f"{key}:{pid}", pid, reference, values) for pid in _patients(resource)]
    if event.resource_type == "DiagnosticReport":
        if resource.get("status") != "final" or (previous or {}).get("status") in ("final", "amended", "corrected"):
            return []
        parts = str(resource.get("subject", {}).get("reference", "")).split("/")
        if len(parts) < 2 or parts[-2] != "Patient":
            return []
        code = resource.get("code", {})
        report = str(code.get("text") or (code.get("coding") or [{}])[0].get("display", ""))
        return [Notice("results-ready", f"results-ready:{reference}", parts[-1], reference, {"report": report})]
    return []


def reminder_notices(appointment: dict[str, Any], settings: Settings) -> list[Notice]:
    reference = f"Appointment/{appointment['id']}"
    key = f"appointment-reminder:{reference}:{appointment.get('start')}"  # a new start: a new reminder
    values = _appointment_values(appointment, settings)
    return [Notice("appointment-reminder", f"{key}:{pid}", pid, reference, values) for pid in _patients(appointment)]


def record(repo: Repository, settings: Settings, notice: Notice, now: datetime | None = None) -> str | None:
    """Write the notice's Communication (and its outbox row when it is to be sent) in ``repo``'s transaction;
    returns its id, or None when the key was already recorded or the patient is not there."""
    now = now or datetime.now(UTC)
    cid = communication_id(notice.key)
    with repo.acting_as(NOTIFY):
        repo.lock(f"notification:{cid}")  # PostgreSQL: concurrent writers of one key wait here (SQLite: already)
        existing = repo.current("Communication", cid)
        patient = repo.current("Patient", notice.patient_id)
        if existing is not None or patient is None or patient.deleted or not patient.content:
            return None
        content = patient.content
        contact = None if opted_out(content) else preferred_contact(content, usable_channels(settings), now)
        language = preferred_language(content, set(TEMPLATES), settings.notify_language)
        subject, text = render(language, notice.event, {"name": display_name(content), **notice.values})
        communication: dict[str, Any] = {
            "resourceType": "Communication", "id": cid, "language": language,
            "identifier": [{"system": "urn:fhir-server:notification", "value": notice.key}],
            "status": "preparation" if contact else "not-done",
            "category": [{"coding": [coding(EVENTS, notice.event)]}],
            "subject": {"reference": f"Patient/{notice.patient_id}"},
            "recipient": [{"reference": f"Patient/{notice.patient_id}"}],
            "reasonReference": [{"reference": notice.about}],
            "topic": {"text": subject},
        }
        if contact is None:
            reason = "opted-out" if opted_out(content) else "no-contact"
            communication["statusReason"] = {"coding": [coding(REASONS, reason)]}
        else:
            communication["medium"] = [CHANNELS[contact.channel]["medium"]]
            communication["payload"] = [{"contentString": text}]
        repo.update("Communication", cid, communication)
        if contact is not None:
            repo.enqueue(TOPIC, cid, {"communication": cid, "channel": contact.channel, "to": contact.address},
                         max_attempts=settings.notify_max_attempts)
    return cid
