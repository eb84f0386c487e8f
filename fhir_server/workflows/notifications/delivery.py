"""The outbox handler of TOPIC: sends one Communication by e-mail or SMS and records the outcome on it.

At least once: the dispatcher retries a failure with exponential backoff (storage/outbox.py); a send whose
Communication is no longer ``preparation`` was already done and is skipped (the Message-ID / Idempotency-Key
is the Communication id, so a receiver can drop the repeat of a send whose completion was not recorded). On the
last attempt the Communication becomes ``not-done`` with statusReason ``delivery-failed`` and the outbox row
is dead-lettered (``fhir-server outbox retry`` sends it again; success makes it ``completed``). Logs and
errors name the Communication id only, never an address or the message.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from fhir_server.storage.outbox import count_attempt, last_attempt
from fhir_server.storage.repository import Repository, instant
from fhir_server.workflows.notifications.contacts import opted_out
from fhir_server.workflows.notifications.record import NOTIFY, REASONS, coding
from fhir_server.workflows.notifications.transport import TransportError, send_email, send_sms

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

log = logging.getLogger(__name__)


def _to_send(communication: dict[str, Any]) -> bool:
    """Still to be sent: being prepared, or dead-lettered and now retried by an operator (fhir-server outbox
    retry), whose row comes back with a fresh set of attempts."""
    if communication.get("status") == "preparation":
        return True
    reasons = communication.get("statusReason", {}).get("coding", [])
    return communication.get("status") == "not-done" and any(c.get("code") == "delivery-failed" for c in reasons)


def _read(repo: Repository, *, cid: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The Communication and its recipient as they are now."""
    version = repo.current("Communication", cid)
    communication = version.content if version is not None and not version.deleted else None
    recipient = str((communication or {}).get("subject", {}).get("reference", "")).split("/")
    patient = repo.current("Patient", recipient[-1]) if len(recipient) == 2 and recipient[0] == "Patient" else None
    return communication, patient.content if patient is not None and not patient.deleted else None


class NotificationSender:
    def __init__(self, server: FhirServer) -> None:
        self.server = server

    def __call__(self, key: str, payload: dict[str, Any]) -> None:
        cid = str(payload["communication"])
        communication, patient = self.server.uow.run(partial(_read, cid=cid), write=False, access=NOTIFY)
        if communication is None or not _to_send(communication):
            return  # sent before (or the patient opted out): at least once, not twice
        if patient is None or opted_out(patient):  # gone, or opted out since (a retry may come hours later)
            self._finish(cid, "not-done", None, reason="no-contact" if patient is None else "opted-out")
            return
        text = str((communication.get("payload") or [{}])[0].get("contentString", ""))
        subject = str(communication.get("topic", {}).get("text", ""))
        settings = self.server.settings
        count_attempt()  # the outbox counts this attempt now, as the message leaves (last_attempt() knows it)
        try:
            if payload["channel"] == "email":
                send_email(settings, str(payload["to"]), subject, text, cid)
            else:
                send_sms(settings, str(payload["to"]), text, cid)
        except TransportError as exc:
            if last_attempt():
                self._finish(cid, "not-done", str(exc))
                log.warning("notification %s dead-lettered: %s", cid, exc)
            raise
        self._finish(cid, "completed", None)


    def _finish(self, cid: str, status: str, failure: str | None, *, reason: str = "delivery-failed") -> None:
        def work(repo: Repository) -> None:
            current = repo.current("Communication", cid, for_update=True)
            if current is None or current.deleted or not current.content or not _to_send(current.content):
                return
            content = {k: v for k, v in current.content.items() if k != "meta"}
            content["status"] = status
            if status == "completed":
                content["sent"] = instant(datetime.now(UTC))
                content.pop("statusReason", None)  # an operator's retry of a dead letter got through
            else:
                content["statusReason"] = {"coding": [coding(REASONS, reason)]}
                if failure:
                    content["statusReason"]["text"] = failure
            repo.update("Communication", cid, content)

        self.server.uow.run(work, write=True, access=NOTIFY)
