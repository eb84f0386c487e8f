"""``Appointment/$find`` and ``Appointment/$book`` (issue 17 item 6), as the Argonaut / IHE ITI Scheduling
operations do (ITI-115 Find Potential Appointments, ITI-116 Book).

``$find`` (GET, or POST of a Parameters): ``start``, ``end`` (dates or date-times; default now and the
planning horizon), ``practitioner`` (Practitioner references), ``organization`` (the department),
``service`` (HealthcareService), ``specialty`` and ``service-type`` (tokens, also ``visit-type``),
``patient`` (put in each proposal), ``_count``. Answers a searchset Bundle of ``proposed`` Appointments, one
per free Slot that starts after the minimum lead time, in time order, each naming its slot, times, service
and practitioner; nothing is held. A free slot whose practitioner already has an appointment then (one
made without a slot) is not offered.

``$book`` (POST): a Parameters whose ``appointment`` (or Argonaut's ``appt-resource``) is the Appointment
(typically a proposal from $find), or the Appointment itself; optional ``patient``. It is stored ``booked``
(created, or its ``proposed`` self updated when it has an id), through the same rules as any other write,
and answered as a searchset Bundle holding it. The caller's access applies throughout: ``$find`` searches
slots, schedules and roles as the caller; ``$book`` creates or updates the Appointment as the caller.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from fhir_server.errors import FORBIDDEN, INVALID, FhirError
from fhir_server.rest.operations import Operation
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.repository import Repository
from fhir_server.workflows.scheduling.common import (
    Rules,
    fhir_instant,
    find,
    now,
    overlaps,
    parse_instant,
    ref_id,
    status_table,
)

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

FIND = "https://profiles.ihe.net/ITI/Scheduling/OperationDefinition/appointment-find"
BOOK = "https://profiles.ihe.net/ITI/Scheduling/OperationDefinition/appointment-book"


def _parameters(req: FhirRequest) -> tuple[list[tuple[str, str]], dict[str, dict[str, Any]]]:
    """(primitive and reference values, resource values) of the query and a POSTed Parameters."""
    pairs = list(req.query)
    resources: dict[str, dict[str, Any]] = {}
    if req.method == "POST" and (req.body or req.resource is not None):
        body = req.json_body()
        if isinstance(body, dict) and body.get("resourceType") == "Appointment":
            resources["appointment"] = body
        elif isinstance(body, dict) and body.get("resourceType") == "Parameters":
            for p in body.get("parameter") or []:
                name = str(p.get("name"))
                if isinstance(p.get("resource"), dict):
                    resources[name] = p["resource"]
                elif isinstance(p.get("valueReference"), dict):
                    pairs.append((name, str(p["valueReference"].get("reference", ""))))
                else:
                    value = next((v for k, v in p.items() if k.startswith("value")), None)
                    if value is not None:
                        pairs.append((name, str(value)))
        else:
            raise FhirError(400, INVALID, "The body must be a Parameters resource (or an Appointment for $book)")
    return pairs, resources


def _values(pairs: list[tuple[str, str]], *names: str) -> list[str]:
    return [v.strip() for k, value in pairs if k in names for v in value.split(",") if v.strip()]


class Find:
    def __init__(self, rules: Rules, default_count: int, max_count: int) -> None:
        self.rules = rules
        self.default_count = default_count
        self.max_count = max_count

    def _when(self, pairs: list[tuple[str, str]], name: str, default: datetime) -> datetime:
        values = _values(pairs, name)
        if not values:
            return default
        if "T" in values[0]:
            return parse_instant(values[0], name)
        try:
            return datetime.combine(datetime.fromisoformat(values[0]).date(), datetime.min.time(), self.rules.zone)
        except ValueError:
            raise FhirError(400, INVALID, f"{name} {values[0]!r} is not a date", (name,)) from None

    def _schedules(self, repo: Repository, pairs: list[tuple[str, str]]) -> set[str] | None:
        """The schedules the criteria allow (None: any); roles by department or service, then their schedules."""
        chosen: set[str] | None = None
        practitioners = _values(pairs, "practitioner", "provider")
        if practitioners:
            found = find(repo, "Schedule", [("actor", ",".join(practitioners))])
            chosen = {s["id"] for s in found}
        for name, param in (("organization", "organization"), ("service", "service")):
            refs = _values(pairs, name)
            if not refs:
                continue
            roles = find(repo, "PractitionerRole", [(param, ",".join(refs))])
            ids = {s["id"] for s in find(repo, "Schedule", [("actor", ",".join(
                f"PractitionerRole/{r['id']}" for r in roles))])} if roles else set()
            chosen = ids if chosen is None else chosen & ids
        return chosen

    def __call__(self, req: FhirRequest, repo: Repository, rtype: str | None, rid: str | None) -> FhirResponse:
        if not repo.access.may("Slot", "s"):  # auth: finding is searching the slots
            raise FhirError(403, FORBIDDEN, "$find needs permission to search Slot", ("Slot",))
        pairs, _ = _parameters(req)
        earliest = now() + self.rules.lead
        start = max(self._when(pairs, "start", earliest), earliest)
        end = self._when(pairs, "end", start + timedelta(days=self.rules.horizon_days))
        counts = _values(pairs, "_count")
        try:
            count = min(int(counts[0]), self.max_count) if counts else self.default_count
        except ValueError:
            raise FhirError(400, INVALID, "_count must be a number", ("_count",)) from None
        schedules = self._schedules(repo, pairs)
        params = [("status", "free"), ("start", f"ge{fhir_instant(start)}"), ("start", f"lt{fhir_instant(end)}")]
        for name, param in (("specialty", "specialty"), ("service-type", "service-type"),
                            ("visit-type", "service-type")):
            values = _values(pairs, name)
            if values:
                params.append((param, ",".join(values)))
        slots: list[dict[str, Any]] = []
        if schedules is None:
            slots = find(repo, "Slot", params)
        else:
            ordered = sorted(schedules)
            for i in range(0, len(ordered), 50):
                refs = ",".join(f"Schedule/{s}" for s in ordered[i:i + 50])
                slots += find(repo, "Slot", [*params, ("schedule", refs)])
        slots.sort(key=lambda s: (parse_instant(s.get("start"), "Slot.start"), s["id"]))
        actors = self._actors(repo, {ref_id(s.get("schedule"), "Schedule") or "" for s in slots})
        slots = self._unbooked(repo, slots, actors, start, end)[:count]
        patients = _values(pairs, "patient")
        entries = [{"fullUrl": f"urn:uuid:{uuid4()}", "resource": self._proposal(s, actors, patients),
                    "search": {"mode": "match"}} for s in slots]
        return FhirResponse(200, {"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                                  "entry": entries})

    def _actors(self, repo: Repository, schedule_ids: set[str]) -> dict[str, list[str]]:
        ids = sorted(i for i in schedule_ids if i)
        out: dict[str, list[str]] = {}
        for v in repo.read_many([("Schedule", i) for i in ids]):
            out[v.id] = [a["reference"] for a in (v.content or {}).get("actor") or []
                         if ref_id(a, "Practitioner") or ref_id(a, "PractitionerRole")]
        return out

    def _unbooked(self, repo: Repository, slots: list[dict[str, Any]], actors: dict[str, list[str]],
                  start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Free slots whose practitioner is not already booked then (an appointment made without a slot)."""
        practitioners = sorted({a for refs in actors.values() for a in refs if a.startswith("Practitioner/")})
        busy: dict[str, list[tuple[datetime, datetime]]] = {}
        for i in range(0, len(practitioners), 50):
            for a in find(repo, "Appointment", [
                    ("actor", ",".join(practitioners[i:i + 50])), ("status", ",".join(status_table()["holds"])),
                    ("date", f"ge{fhir_instant(start - timedelta(days=1))}"), ("date", f"lt{fhir_instant(end)}")]):
                if not a.get("start") or not a.get("end"):
                    continue
                span = (parse_instant(a["start"], "Appointment.start"), parse_instant(a["end"], "Appointment.end"))
                for p in a.get("participant") or []:
                    busy.setdefault(str((p.get("actor") or {}).get("reference")), []).append(span)
        out = []
        for slot in slots:
            span = (parse_instant(slot["start"], "Slot.start"), parse_instant(slot["end"], "Slot.end"))
            who = actors.get(ref_id(slot.get("schedule"), "Schedule") or "", [])
            if not any(overlaps(*span, *b) for ref in who for b in busy.get(ref, [])):
                out.append(slot)
        return out

    def _proposal(self, slot: dict[str, Any], actors: dict[str, list[str]], patients: list[str]) -> dict[str, Any]:
        schedule = ref_id(slot.get("schedule"), "Schedule") or ""
        participants = [{"actor": {"reference": ref}, "required": "required", "status": "needs-action"}
                        for ref in [*actors.get(schedule, []), *patients]]
        proposal: dict[str, Any] = {"resourceType": "Appointment", "status": "proposed",
                                    "slot": [{"reference": f"Slot/{slot['id']}"}], "start": slot["start"],
                                    "end": slot["end"], "participant": participants}
        for name in ("serviceType", "specialty"):
            if slot.get(name):
                proposal[name] = slot[name]
        return proposal


class Book:
    def __call__(self, req: FhirRequest, repo: Repository, rtype: str | None, rid: str | None) -> FhirResponse:
        pairs, resources = _parameters(req)
        appointment = resources.get("appointment") or resources.get("appt-resource")
        if appointment is None or appointment.get("resourceType") != "Appointment":
            raise FhirError(400, INVALID, "$book needs the Appointment (parameter 'appointment')", ("appointment",))
        appointment = {**appointment, "status": "booked"}
        participants = list(appointment.get("participant") or [])
        known = {(p.get("actor") or {}).get("reference") for p in participants}
        for ref in _values(pairs, "patient"):
            if ref not in known:
                participants.append({"actor": {"reference": ref}, "required": "required", "status": "accepted"})
        for p in participants:
            if p.get("status") == "needs-action":  # booking is the acceptance of the proposal
                p["status"] = "accepted"
        appointment["participant"] = participants
        existing = repo.current("Appointment", appointment["id"]) if appointment.get("id") else None
        if existing is not None and not existing.deleted:
            version, _ = repo.update("Appointment", appointment["id"], appointment)
        else:
            appointment.pop("id", None)
            appointment.pop("meta", None)
            version = repo.create("Appointment", appointment)
        return FhirResponse(200, {"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [
            {"fullUrl": f"Appointment/{version.id}", "resource": version.content, "search": {"mode": "match"}}]})


def register(server: FhirServer, rules: Rules) -> None:
    s = server.settings
    server.operations.register(Operation("find", Find(rules, s.default_page_size, s.max_page_size), FIND,
                                         types=frozenset({"Appointment"}), read_only=True))
    server.operations.register(Operation("book", Book(), BOOK, types=frozenset({"Appointment"}),
                                         affects_state=True))
