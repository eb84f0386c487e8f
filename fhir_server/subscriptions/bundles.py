"""Backport IG notification Bundles (``backport-subscription-notification-r4``) and the status Parameters
(``backport-subscription-status-r4``) that open them: handshake, heartbeat, event-notification,
query-status and query-event all share this shape; only ``type`` and the events listed differ.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir_server.storage.repository import instant
from fhir_server.subscriptions.spec import BACKPORT, SubscriptionSpec

NOTIFICATION_PROFILE = BACKPORT + "backport-subscription-notification-r4"
STATUS_PROFILE = BACKPORT + "backport-subscription-status-r4"
METHODS = {"create": ("POST", "201"), "update": ("PUT", "200"), "delete": ("DELETE", "204")}


@dataclass(frozen=True)
class Event:
    number: int
    timestamp: datetime
    focus: str  # Type/id/_history/version
    interaction: str

    @property
    def reference(self) -> str:
        return self.focus.split("/_history/", 1)[0]


def _url(base: str, path: str) -> str:
    return f"{base.rstrip('/')}/{path}" if base else path


def status_parameters(sub: SubscriptionSpec, *, base: str, kind: str, events_since: int, events: list[Event],
                      status: str | None = None, error: str | None = None) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": _url(base, f"Subscription/{sub.id}")}},
        {"name": "topic", "valueCanonical": sub.topic or sub.criteria},
        {"name": "status", "valueCode": status or sub.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(events_since)},
    ]
    for event in events:
        part: list[dict[str, Any]] = [{"name": "event-number", "valueString": str(event.number)},
                                      {"name": "timestamp", "valueInstant": instant(event.timestamp)}]
        if sub.content != "empty":
            part.append({"name": "focus", "valueReference": {"reference": _url(base, event.reference)}})
        params.append({"name": "notification-event", "part": part})
    if error:
        params.append({"name": "error", "valueCodeableConcept": {"text": error}})
    return {"resourceType": "Parameters", "id": str(uuid.uuid4()), "meta": {"profile": [STATUS_PROFILE]},
            "parameter": params}


def notification_bundle(sub: SubscriptionSpec, *, base: str, kind: str, events_since: int,
                        events: list[Event] | None = None, resources: dict[str, dict[str, Any] | None] | None = None,
                        status: str | None = None, error: str | None = None) -> dict[str, Any]:
    """``resources``: focus (Type/id/_history/v) -> content, for full-resource subscriptions."""
    parameters = status_parameters(sub, base=base, kind=kind, events_since=events_since, events=list(events or []),
                                   status=status, error=error)
    entries: list[dict[str, Any]] = [{
        "fullUrl": f"urn:uuid:{parameters['id']}", "resource": parameters,
        "request": {"method": "GET", "url": f"Subscription/{sub.id}/$status"}, "response": {"status": "200"}}]
    if sub.content != "empty":
        for event in events or []:
            method, code = METHODS.get(event.interaction, ("PUT", "200"))
            entry: dict[str, Any] = {"fullUrl": _url(base, event.reference),
                                     "request": {"method": method, "url": event.reference},
                                     "response": {"status": code}}
            content = (resources or {}).get(event.focus)
            if sub.content == "full-resource" and content is not None:
                entry["resource"] = content
            entries.append(entry)
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "meta": {"profile": [NOTIFICATION_PROFILE]},
            "type": "history", "timestamp": instant(datetime.now(UTC)), "entry": entries}
