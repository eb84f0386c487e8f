"""Where an exchange cycle lives: on the resource it is about (Claim or CoverageEligibilityRequest).

One ``hcx-exchange`` extension per cycle (correlation id) on the anchor, and the correlation id as an
identifier so a callback finds its anchor with an ordinary search. The api_call_ids received are kept on the
cycle: a callback is applied under the anchor's row lock, so a duplicate sees the first one's mark and
changes nothing. Every exchange is an AuditEvent naming the anchor and its patient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fhir_server.audit.recorder import recording
from fhir_server.storage.repository import Repository, instant
from interfaces.claims import tables  # noqa: F401 (claims_api_call on the storage metadata)

EXCHANGE = "urn:fhir-server:extension:hcx-exchange"
CORRELATION_SYSTEM = "urn:fhir-server:hcx:correlation-id"
API_SYSTEM = "https://hcxprotocol.io/api"  # AuditEvent.subtype: the protocol API exchanged
PARTICIPANT_SYSTEM = "https://hcxprotocol.io/participant_code"
ANCHOR_TYPES = ("Claim", "CoverageEligibilityRequest")
OPEN = ("queued", "undelivered", "sent", "partial")  # undelivered: dead-lettered, `outbox retry` resends


@dataclass
class Cycle:
    correlation_id: str
    action: str
    payer: str
    status: str = "queued"
    workflow_id: str | None = None
    error: str | None = None
    response: str | None = None  # the ClaimResponse / CoverageEligibilityResponse stored for this cycle
    payer_status: str | None = None  # what the payer last said of it on /hcx/on_status (Task status: business)
    api_calls: list[str] = field(default_factory=list)  # inbound x-hcx-api_call_id seen on this cycle

    @property
    def open(self) -> bool:
        return self.status in OPEN

    def extension(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"url": "correlationId", "valueString": self.correlation_id},
                                       {"url": "action", "valueString": self.action},
                                       {"url": "payer", "valueString": self.payer},
                                       {"url": "status", "valueCode": self.status}]
        if self.workflow_id:
            parts.append({"url": "workflowId", "valueString": self.workflow_id})
        if self.error:
            parts.append({"url": "error", "valueString": self.error})
        if self.response:
            parts.append({"url": "response", "valueReference": {"reference": self.response}})
        if self.payer_status:
            parts.append({"url": "payerStatus", "valueString": self.payer_status})
        parts += [{"url": "apiCallId", "valueString": a} for a in self.api_calls]
        return {"url": EXCHANGE, "extension": parts}

    @classmethod
    def parse(cls, ext: dict[str, Any]) -> Cycle:
        values: dict[str, list[str]] = {}
        for part in ext.get("extension") or []:
            value = next((v for k, v in part.items() if k.startswith("value")), None)
            if isinstance(value, dict):
                value = value.get("reference")
            if isinstance(value, str):
                values.setdefault(str(part.get("url")), []).append(value)

        def one(name: str) -> str | None:
            found = values.get(name)
            return found[0] if found else None

        return cls(one("correlationId") or "", one("action") or "", one("payer") or "", one("status") or "queued",
                   one("workflowId"), one("error"), one("response"), one("payerStatus"), values.get("apiCallId", []))


def cycles(resource: dict[str, Any]) -> list[Cycle]:
    return [Cycle.parse(e) for e in resource.get("extension") or [] if e.get("url") == EXCHANGE]


def cycle_of(resource: dict[str, Any], correlation_id: str) -> Cycle | None:
    return next((c for c in cycles(resource) if c.correlation_id == correlation_id), None)


def with_cycle(resource: dict[str, Any], cycle: Cycle) -> dict[str, Any]:
    """``resource`` with ``cycle`` added or replaced (and its correlation id as an identifier)."""
    out = dict(resource)
    others = [e for e in resource.get("extension") or []
              if e.get("url") != EXCHANGE or Cycle.parse(e).correlation_id != cycle.correlation_id]
    out["extension"] = [*others, cycle.extension()]
    identifiers = list(resource.get("identifier") or [])
    if not any(i.get("system") == CORRELATION_SYSTEM and i.get("value") == cycle.correlation_id
               for i in identifiers):
        identifiers.append({"system": CORRELATION_SYSTEM, "value": cycle.correlation_id})
    out["identifier"] = identifiers
    return out


def find_anchor(repo: Repository, correlation_id: str) -> tuple[str, str] | None:
    """(type, id) of the resource whose cycle has this correlation id."""
    for rtype in ANCHOR_TYPES:
        ids = repo.find_ids(rtype, [("identifier", f"{CORRELATION_SYSTEM}|{correlation_id}")], limit=2)
        if ids:
            return rtype, ids[0]
    return None


def audit(repo: Repository, anchor: str, api: str, *, inbound: bool, participant: str | None,
          status: int = 200, error: str | None = None, correlation_id: str | None = None,
          api_call_id: str | None = None, patient: str | None = None, reason: str | None = None) -> None:
    """An AuditEvent for one protocol exchange (DICOM 110107 Import in, 110106 Export out), in ``repo``'s
    transaction: it exists iff what the exchange changed committed."""
    agents: list[dict[str, Any]] = [{"who": {"display": "fhir-server"}, "requestor": True,
                                     "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM",
                                                          "code": "110150", "display": "Application"}]}}]
    if reason:  # as_system(reason): why the server acted with full access
        agents[0]["purposeOfUse"] = [{"text": reason}]
    if participant:
        agents.append({"who": {"identifier": {"system": PARTICIPANT_SYSTEM, "value": participant}},
                       "requestor": False})
    details = [{"type": k, "valueString": v} for k, v in (("x-hcx-correlation_id", correlation_id),
                                                           ("x-hcx-api_call_id", api_call_id)) if v]
    entity: list[dict[str, Any]] = [{"what": {"reference": anchor} if anchor else {"display": "unknown exchange"}}]
    if details:
        entity[0]["detail"] = details
    if patient:
        entity.append({"what": {"reference": patient},
                       "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"}})
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110107" if inbound else "110106",
                 "display": "Import" if inbound else "Export"},
        "subtype": [{"system": API_SYSTEM, "code": api}],
        "action": "C" if inbound else "R", "recorded": instant(datetime.now(UTC)),
        "outcome": "0" if status < 400 and not error else "4" if status < 500 else "8",
        "agent": agents, "source": {"observer": {"display": "fhir-server"}}, "entity": entity}
    if error:
        event["outcomeDesc"] = error
    with recording():  # the server's own audit record: the append-only guard lets it through
        repo.create("AuditEvent", event)
