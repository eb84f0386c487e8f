"""AuditEvent resources (FHIR R4, IHE BALP style) from what happened: who (the user, the client app, the
network address), what (the resources, the query, the patients concerned), the outcome, when.

Pure functions: the recorder builds events on its background thread, so a read pays only for a queue put.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fhir_server.audit.codes import (
    CLIENT_SYSTEM,
    DCM,
    ENTITY_TYPE,
    INTERACTION,
    OBJECT_ROLE,
    ROLE_SYSTEM,
    SECURITY_ROLE,
    SOURCE_TYPE,
    USER_SYSTEM,
    coding,
    concept,
)
from fhir_server.auth.compartment import patients_of
from fhir_server.storage.repository import instant

OBSERVER = {"display": "fhir-server"}


@dataclass(frozen=True)
class Actor:
    """Who acted: a signed-in user (through a client app), a backend client, or nobody known."""

    address: str | None = None  # the client's network address
    client_id: str | None = None
    user_id: str | None = None  # token ``sub`` of a user
    username: str | None = None
    fhir_user: str | None = None  # Practitioner/1, Patient/7
    role: str | None = None
    internal: bool = False  # the server's own work (background jobs, maintenance), no request behind it


SERVER = Actor(internal=True)


@dataclass
class Record:
    """One audited event, before it becomes an AuditEvent."""

    subtype: dict[str, str]  # a restful-interaction coding, DCM 110122 Login, or one of ours
    action: str  # C R U D E
    status: int  # the HTTP status answered (or the OAuth outcome as one)
    actor: Actor
    kind: str = "110110"  # DCM: 110110 Patient Record (REST), 110114 User Authentication
    targets: list[str] = field(default_factory=list)  # "Type/id" references acted on
    resources: list[dict[str, Any]] = field(default_factory=list)  # content returned or written (-> patients)
    query: str | None = None  # a search's query, stored base64 (AuditEvent.entity.query), never logged
    recorded: datetime = field(default_factory=lambda: datetime.now(UTC))


def outcome(status: int) -> str:
    """0 success, 4 minor failure (the client's request: 4xx, denied access), 8 serious failure (5xx)."""
    return "0" if status < 400 else "4" if status < 500 else "8"


def _agents(actor: Actor) -> list[dict[str, Any]]:
    network = {"address": actor.address, "type": "2"} if actor.address else None  # 2: IP address
    agents: list[dict[str, Any]] = []
    if actor.user_id or actor.username:
        user: dict[str, Any] = {"type": concept(SECURITY_ROLE, "humanuser"), "requestor": True}
        if actor.fhir_user:
            user["who"] = {"reference": actor.fhir_user}
        else:
            user["who"] = {"identifier": {"system": USER_SYSTEM, "value": actor.user_id or actor.username}}
        if actor.user_id:
            user["altId"] = actor.user_id
        if actor.username:
            user["name"] = actor.username
        if actor.role:
            user["role"] = [{"coding": [{"system": ROLE_SYSTEM, "code": actor.role}]}]
        if network and not actor.client_id:
            user["network"] = network
        agents.append(user)
    if actor.client_id:
        app: dict[str, Any] = {"type": concept(DCM, "110150"), "requestor": not agents,
                               "who": {"identifier": {"system": CLIENT_SYSTEM, "value": actor.client_id}},
                               "altId": actor.client_id}
        if network:
            app["network"] = network
        agents.append(app)
    if not agents and actor.internal:
        agents.append({"type": concept(DCM, "110150"), "who": OBSERVER, "requestor": True})
    if not agents:  # no token (FHIR_AUTH_REQUIRED=false, HL7 v2 adapters, the CLI)
        anonymous: dict[str, Any] = {"who": {"display": "unauthenticated"}, "requestor": True}
        if network:
            anonymous["network"] = network
        agents.append(anonymous)
    return agents


def _patients(record: Record) -> list[str]:
    found: dict[str, None] = {}
    for content in record.resources:
        rtype = content.get("resourceType")
        if isinstance(rtype, str):
            found.update(dict.fromkeys(patients_of(rtype, content)))
    for target in record.targets:
        if target.startswith("Patient/"):
            found.setdefault(target.split("/")[1], None)
    return list(found)


def _entities(record: Record) -> Iterable[dict[str, Any]]:
    for target in record.targets:
        if not target.startswith("Patient/"):  # a Patient is listed once, as the patient concerned
            yield {"what": {"reference": target}, "type": coding(ENTITY_TYPE, "2"),
                   "role": coding(OBJECT_ROLE, "4")}
    if record.query is not None:
        yield {"type": coding(ENTITY_TYPE, "2"), "role": coding(OBJECT_ROLE, "24"),
               "query": base64.b64encode(record.query.encode()).decode()}
    for patient in _patients(record):
        yield {"what": {"reference": f"Patient/{patient}"}, "type": coding(ENTITY_TYPE, "1"),
               "role": coding(OBJECT_ROLE, "1")}


def audit_event(record: Record) -> dict[str, Any]:
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": coding(DCM, record.kind),
        "subtype": [record.subtype],
        "action": record.action,
        "recorded": instant(record.recorded),
        "outcome": outcome(record.status),
        "agent": _agents(record.actor),
        "source": {"observer": OBSERVER, "type": [coding(SOURCE_TYPE, "4")]},
    }
    if record.status >= 400:
        event["outcomeDesc"] = f"HTTP {record.status}"
    entities = list(_entities(record))
    if entities:
        event["entity"] = entities
    return event


def interaction(code: str) -> dict[str, str]:
    return coding(INTERACTION, code)
