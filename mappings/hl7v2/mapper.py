"""V2 message -> FHIR transaction Bundle, driven by the JSON data under this package.

``messages/*.json``   one root template per trigger event (which segments make which resources, with ids);
``resources/*.json``  one template per resource made from a segment (Patient from PID, ...);
``datatypes/*.json``  partials per v2 datatype (CX -> Identifier, XPN -> HumanName, ...);
``codemaps/*.json``   v2 tables -> FHIR codes (sex -> gender, abnormal flags -> interpretation, ...).

Ids are uuid5 of what identifies the thing in v2 (filler order number + observation id + sub-id, visit
number, ...), so a re-sent or corrected message updates the same resources instead of adding new ones.
Patients are matched by PID-3 identifiers: a conditional create (results, orders) or a conditional update
(ADT, the source of demographics) in the same transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mappings.hl7v2.checks import message_errors
from mappings.hl7v2.engine import Engine
from mappings.hl7v2.errors import (
    MESSAGE_ACCEPTED,
    REQUIRED_FIELD_MISSING,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    ErrorDetail,
    MappingError,
    RejectedMessage,
)
from mappings.hl7v2.functions import FUNCTIONS
from mappings.hl7v2.header import Header
from mappings.hl7v2.law import LAW_FUNCTIONS, OrderResolver, match_order, merged, no_order
from mappings.hl7v2.message import V2Message
from mappings.hl7v2.values import Context, Planned, Value, stable_uuid

ROOT = Path(__file__).parent
MESSAGE_SYSTEM = "urn:fhir-server:hl7v2-message"
# MSH-3 of what we send (orders out) and the placer namespace in ORC-2/OBR-2 of our own orders.
OWN_APPLICATION = "FHIR-SERVER"  # Provenance.entity identifier: "<sender>|<control id>"
# Requests that find a resource by identifier: two rules naming the same one (a doctor in PV1-7 and PV1-17)
# make one entry, not two creates of one thing.
SHARED = ("create-if-absent", "upsert")


def _load_dir(path: Path) -> dict[str, Any]:
    return {p.stem: json.loads(p.read_text("utf-8")) for p in sorted(path.glob("*.json"))}


@dataclass
class MappingResult:
    bundle: dict[str, Any]
    # Per bundle entry: the segment it came from, e.g. ("OBX", 3) — to place a transaction error in ERR.
    sources: list[tuple[str, int]]
    # What was not mapped (ERR severity W in the AA; kept with the stored message): Z-segments.
    warnings: list[ErrorDetail] = field(default_factory=list)


def z_segments(msg: V2Message) -> list[ErrorDetail]:
    """Z-segments (locally defined, v2 section 2.5.5) are never a reason to refuse a message: each is named in
    a warning, its content stays in the stored message (``hl7 replay`` once a template maps it)."""
    return [ErrorDetail(MESSAGE_ACCEPTED, f"Segment {seg.id} (locally defined) is not mapped; kept in the "
                        "stored message", seg.id, seg.occurrence, severity="W")
            for seg in msg.segments if seg.id.startswith("Z")]


class V2Mapper:
    def __init__(self, root: Path = ROOT, identifier_systems: dict[str, str] | None = None,
                 default_tz: str = "+00:00", own_application: str = OWN_APPLICATION,
                 facility_authorities: dict[str, str] | None = None, resolver: OrderResolver | None = None) -> None:
        """``resolver``: finds the orders results are for (rules with ``"request": "match"``, mappings/hl7v2/law.py);
        without one (conversion alone, golden files) such an order is written as the message states it."""
        self.own_application = own_application
        self.resolver = resolver
        self.messages = _load_dir(root / "messages")
        self.resources = _load_dir(root / "resources")
        codemaps = _load_dir(root / "codemaps")
        if identifier_systems:
            codemaps["identifier-systems"] = {**codemaps["identifier-systems"],
                                              "map": {**codemaps["identifier-systems"]["map"],
                                                      **identifier_systems}}
        codemaps["facility-authorities"] = {"map": dict(facility_authorities or {})}
        self.engine = Engine(_load_dir(root / "datatypes"), codemaps, {**FUNCTIONS, **LAW_FUNCTIONS}, default_tz)
        self.events: dict[str, str] = {}
        for name, template in self.messages.items():
            for event in template["events"]:
                self.events[event] = name

    def template_for(self, header: Header) -> dict[str, Any]:
        name = self.events.get(header.event)
        if name is None:
            known_type = any(e.startswith(header.message_type + "^") for e in self.events)
            code = UNSUPPORTED_EVENT_CODE if known_type else UNSUPPORTED_MESSAGE_TYPE
            what = f"event {header.event}" if known_type else f"message type {header.message_type or '(none)'}"
            raise RejectedMessage(ErrorDetail(code, f"Unsupported {what}", "MSH", 1, 9,
                                              2 if known_type else 1))
        return dict(self.messages[name])

    def map(self, msg: V2Message, header: Header, received: datetime,
            message_key: str | None = None) -> MappingResult:
        """``message_key``: the control id the message is stored under, when not MSH-10 itself (a control
        id its sender reused for other content): what names the message in ids and its Provenance."""
        if message_key and message_key != header.control_id[:199]:
            header = replace(header, control_id=message_key)
        return self._map(msg, header, received)

    def _map(self, msg: V2Message, header: Header, received: datetime) -> MappingResult:
        template = self.template_for(header)
        errors = message_errors(msg, header)
        if errors:
            raise MappingError(*errors)
        variables = {"sender": header.sender, "control_id": header.control_id, "event": header.event,
                     "message_type": header.message_type, "trigger": header.trigger_event,
                     "sending_application": header.sending_application,
                     "sending_facility": header.sending_facility, "own_application": self.own_application}
        wanted = template.get("requires_one_of", [])
        if wanted and not any(msg.first(seg_id) for seg_id in wanted):  # ORM: an OBR, or an RXO, ODS or RQD
            raise MappingError(ErrorDetail(REQUIRED_FIELD_MISSING, f"Segment {wanted[0]} is required (or one of "
                                           f"{', '.join(wanted[1:])})", wanted[0], 1))
        planned: list[Planned] = []
        ctx0 = Context(self.engine, msg, msg.msh, variables, planned)
        for rule in template["resources"]:
            planned.extend(self._plan(rule, ctx0))
        entries: list[dict[str, Any]] = []
        sources: list[tuple[str, int]] = []
        for p in planned:
            entry = self._entry(p, ctx0.at(p.segment))
            if entry is not None:
                entries.append(entry)
                sources.append((p.segment.id, p.segment.occurrence))
        entries.append(self._provenance(header, entries, received, template))
        sources.append(("MSH", 1))
        return MappingResult({"resourceType": "Bundle", "type": "transaction", "entry": entries}, sources,
                             z_segments(msg))

    def _plan(self, rule: dict[str, Any], ctx0: Context) -> list[Planned]:
        segments = ctx0.msg.all(rule["segment"])
        if not segments and rule.get("required"):
            raise MappingError(ErrorDetail(REQUIRED_FIELD_MISSING, f"Segment {rule['segment']} is required",
                                           rule["segment"], 1))
        if not rule.get("each"):
            segments = segments[:1]
        out: list[Planned] = []
        seen: set[str] = set()
        resource_type = self.resources[rule["template"]]["resourceType"]
        for seg in segments:
            for value in self._values(rule, ctx0.at(seg)):
                ctx = ctx0.at(seg) if value is None else ctx0.at(seg).with_value(value)
                if "when" in rule and not self.engine._test(rule["when"], ctx):
                    continue
                parts = [str(self.engine.render(expr, ctx) or "") for expr in rule.get("id", [])]
                if not any(parts):  # nothing identifies it: unique to this message (and stable on replay)
                    parts = [ctx.variables["sender"], ctx.variables["control_id"], seg.id, str(seg.occurrence)]
                anchor = ctx0.msg.nearest(rule["group"], seg) if "group" in rule else None
                uid = stable_uuid(resource_type, *parts)
                if rule.get("request") in SHARED and any(p.uuid == uid for p in (*ctx0.planned, *out)):
                    continue  # one practitioner named in PV1-7 and PV1-17, one ward of two beds: one entry
                if uid in seen:  # two groups of one message the id fields do not tell apart (three orders with
                    # the same or no placer number): each is its own resource, told apart by its position
                    uid = stable_uuid(resource_type, *parts, seg.id, str(seg.occurrence))
                seen.add(uid)
                out.append(Planned(rule["key"], resource_type, seg, uid, rule, anchor, value=value))
        return out

    def _values(self, rule: dict[str, Any], ctx: Context) -> list[Value | None]:
        """A rule naming a ``field`` (PV1-7, PV1-3) makes one resource per repetition of that field (the
        template reads it with relative paths, ``$.1``); else one per segment."""
        if "field" not in rule:
            return [None]
        values = self.engine.resolve(rule["field"], ctx)
        return list(values if rule.get("repetitions", True) else values[:1])

    def _entry(self, p: Planned, ctx: Context) -> dict[str, Any] | None:
        if p.value is not None:
            ctx = ctx.with_value(p.value)
        template = self.resources[p.rule["template"]]
        for check in template.get("$checks", []):  # refuse what the template cannot map, before mapping
            self.engine.render(check, ctx)
        body = self.engine.render({k: v for k, v in template.items() if k not in ("resourceType", "$checks")},
                                  ctx) or {}
        resource: dict[str, Any] = {"resourceType": p.resource_type, **body}
        mode = p.rule.get("request", "update")
        if mode == "match":  # the order results are for: found by barcode / placer / filler number, or new
            found = match_order(self.resolver, p, ctx) if self.resolver is not None else None
            if found is not None:
                p.existing, p.subject = found.reference, found.subject
                return None
            if "create" in p.rule and not self.engine._test(p.rule["create"], ctx):
                raise no_order(p, ctx)
            mode = "update"
        if mode == "update" and p.existing is not None:  # onto a resource the server holds (law.py)
            rid = p.existing.split("/", 1)[1]
            resource = {**merged(p.merge or {}, body), "resourceType": p.resource_type, "id": rid}
            request = {"method": "PUT", "url": p.existing}
        elif mode == "update":
            resource = {"resourceType": p.resource_type, "id": p.uuid, **body}
            request = {"method": "PUT", "url": f"{p.resource_type}/{p.uuid}"}
        else:
            criteria = self._identity(resource, p)
            if mode == "create-if-absent":
                request = {"method": "POST", "url": p.resource_type, "ifNoneExist": criteria}
            else:  # upsert: conditional update by identifier
                request = {"method": "PUT", "url": f"{p.resource_type}?{criteria}"}
        p.resource = resource
        return {"fullUrl": f"urn:uuid:{p.uuid}", "resource": resource, "request": request}

    def _identity(self, resource: dict[str, Any], p: Planned) -> str:
        identifiers = [i for i in resource.get("identifier", []) if i.get("value")]
        if not identifiers:
            field = p.rule.get("identity", f"{p.segment.id}-0")
            seq = int(field.split("-")[1])
            raise MappingError(ErrorDetail(REQUIRED_FIELD_MISSING,
                                           f"{p.resource_type} needs an identifier ({field})",
                                           p.segment.id, p.segment.occurrence, seq, 1))
        # Prefer the identifier the rule names by type (e.g. MR), then one with a system.
        preferred = p.rule.get("preferType")
        identifiers.sort(key=lambda i: (
            not any(c.get("code") == preferred for c in i.get("type", {}).get("coding", [])), "system" not in i))
        ident = identifiers[0]
        token = f"{ident['system']}|{ident['value']}" if ident.get("system") else ident["value"]
        return "identifier=" + quote(token, safe=":/|.-_")

    def _provenance(self, header: Header, entries: list[dict[str, Any]], received: datetime,
                    template: dict[str, Any]) -> dict[str, Any]:
        pid = stable_uuid("Provenance", header.sender, header.control_id)
        resource = {
            "resourceType": "Provenance", "id": pid,
            "target": [{"reference": e["fullUrl"]} for e in entries],
            "recorded": received.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0003",
                                     "code": header.trigger_event}],
                         "text": header.event},
            "agent": [{
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                     "code": "author"}]},
                "who": {"display": " ".join(p for p in (header.sending_application, header.sending_facility)
                                            if p) or "unknown sender"},
            }],
            "entity": [{"role": "source", "what": {
                "identifier": {"system": MESSAGE_SYSTEM, "value": f"{header.sender}|{header.control_id}"},
                "display": f"HL7 v2 {header.event} message {header.control_id} ({template['structure']})",
            }}],
        }
        return {"fullUrl": f"urn:uuid:{pid}", "resource": resource,
                "request": {"method": "PUT", "url": f"Provenance/{pid}"}}
