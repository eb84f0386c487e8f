"""Check-in (issue 17 item 7): a booked appointment becomes ``arrived`` (a PUT/PATCH of its status, or
``POST Appointment/[id]/$check-in``), and in the same transaction the visit's Encounter is created, or the
one already pointing at the appointment (``Encounter.appointment``) updated: class AMB, status ``arrived``,
the patient, the practitioner (``participant.individual``, type PPRF), the service (``serviceType``, from
the appointment or its slot) and its department (``serviceProvider``: the role's organization),
``period.start`` = now, and the ``queue-position`` extension: the token number of the practitioner's day
(1, 2, ... in check-in order, drawn under a per-doctor-per-day lock).

The queue is searchable as ``Encounter?practitioner=Practitioner/[id]&date=geDAY&date=ltNEXTDAY
&status=arrived&_sort=date``: the waiting patients in check-in order. The Encounter is written with the
caller's access (a front desk may write Encounters); the count behind the token number reads every
Encounter of that practitioner's day, so it acts as the system.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhir_server.errors import INVALID, FhirError
from fhir_server.hooks import HookPoint, WriteEvent
from fhir_server.rest.operations import Operation
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository
from fhir_server.workflows.rules import rule_violation
from fhir_server.workflows.scheduling.common import (
    ACT_CODE,
    Rules,
    extension_url,
    fhir_instant,
    find,
    now,
    parse_instant,
    ref_id,
)

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

DEFINITION = "https://fhir-server.dev/OperationDefinition/Appointment-check-in"
SYSTEM = as_system("the practitioner's day queue: token numbers count every check-in of the day")
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


def queue_position(encounter: dict[str, Any]) -> int | None:
    url = extension_url("queue-position")
    return next((e.get("valuePositiveInt") for e in encounter.get("extension") or [] if e.get("url") == url), None)


class CheckIn:
    """BEFORE_COMMIT on Appointment: booked -> arrived writes the Encounter."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules

    def __call__(self, event: WriteEvent, repo: Repository | None) -> None:
        after = event.resource
        if event.resource_type != "Appointment" or repo is None or after is None or after.get("status") != "arrived":
            return
        if event.previous is not None and (event.previous.content or {}).get("status") == "arrived":
            return
        patient = next((p["actor"] for p in after.get("participant") or [] if ref_id(p.get("actor"), "Patient")), None)
        if patient is None:
            raise rule_violation(422, "checkin-patient", "A check-in needs the appointment's patient",
                                 ("Appointment.participant",))
        practitioners = [p["actor"]["reference"] for p in after.get("participant") or []
                         if ref_id(p.get("actor"), "Practitioner")]
        appointment_ref = f"Appointment/{event.resource_id}"
        existing = find(repo, "Encounter", [("appointment", appointment_ref)], limit=1)
        position = self._token(repo, practitioners[0]) if practitioners else None
        encounter: dict[str, Any] = dict(existing[0]) if existing else {"resourceType": "Encounter"}
        encounter.update({
            "status": "arrived",
            "class": {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"},
            "subject": {"reference": patient["reference"]},
            "appointment": [{"reference": appointment_ref}],
            "period": {**(encounter.get("period") or {}),
                       "start": fhir_instant(now(), self.rules.zone, "milliseconds")}})  # the queue's order
        if practitioners:
            encounter["participant"] = [{
                "type": [{"coding": [{"system": PARTICIPATION, "code": "PPRF", "display": "primary performer"}]}],
                "individual": {"reference": ref}} for ref in practitioners]
        if after.get("serviceType"):
            encounter["serviceType"] = after["serviceType"][0]
        department = self._department(repo, after)
        if department is not None:
            encounter["serviceProvider"] = {"reference": department}
        url = extension_url("queue-position")
        encounter["extension"] = [e for e in encounter.get("extension") or [] if e.get("url") != url] + (
            [{"url": url, "valuePositiveInt": position}] if position is not None else [])
        if not encounter["extension"]:
            del encounter["extension"]
        if existing:
            repo.update("Encounter", encounter["id"], encounter)  # the caller's access
        else:
            repo.create("Encounter", encounter)

    def _department(self, repo: Repository, appointment: dict[str, Any]) -> str | None:
        """The department (PractitionerRole.organization) behind the appointment's slot, if any."""
        with repo.acting_as(SYSTEM):
            for ref in appointment.get("slot") or []:
                slot = repo.current("Slot", ref_id(ref, "Slot") or "")
                schedule_id = ref_id((slot.content or {}).get("schedule"), "Schedule") if slot is not None else None
                schedule = repo.current("Schedule", schedule_id) if schedule_id else None
                for actor in (schedule.content or {}).get("actor") or [] if schedule is not None else []:
                    role_id = ref_id(actor, "PractitionerRole")
                    role = repo.current("PractitionerRole", role_id) if role_id else None
                    org = ((role.content or {}).get("organization") or {}).get("reference") if role else None
                    if org:
                        return str(org)
        return None

    def _token(self, repo: Repository, practitioner: str) -> int:
        day_start, day_end = self.rules.local_day(now())
        # one token number per check-in, under concurrency
        repo.lock(f"scheduling:queue:{practitioner}:{day_start.date().isoformat()}")
        with repo.acting_as(SYSTEM):
            todays = find(repo, "Encounter", [("practitioner", practitioner), ("date", f"ge{fhir_instant(day_start)}"),
                                              ("date", f"lt{fhir_instant(day_end)}")])
        numbers = [queue_position(e) or 0 for e in todays  # begun that day (an open visit of yesterday is not)
                   if (e.get("period") or {}).get("start")
                   and day_start <= parse_instant(e["period"]["start"], "Encounter.period.start")]
        return max(numbers, default=0) + 1


class CheckInOperation:
    """``POST Appointment/[id]/$check-in``: the appointment arrives; answers its Encounter and queue position."""

    def __call__(self, req: FhirRequest, repo: Repository, rtype: str | None, rid: str | None) -> FhirResponse:
        if rid is None:
            raise FhirError(400, INVALID, "$check-in runs on one appointment: POST Appointment/[id]/$check-in")
        current = repo.read("Appointment", rid)  # the caller's access: 403 / 404 / 410
        content = dict(current.content or {})
        if content.get("status") != "booked":
            raise rule_violation(422, "checkin-status", f"Only a booked appointment checks in (this one is "
                                 f"{content.get('status')})", ("Appointment.status",))
        version, _ = repo.update("Appointment", rid, {**content, "status": "arrived"}, if_match=current.version_id)
        written = next((e.version for e in reversed(repo.events)
                        if e.resource_type == "Encounter" and e.version is not None and e.resource is not None
                        and {"reference": f"Appointment/{rid}"} in e.resource.get("appointment", [])), None)
        encounter = repo.access.mask(written).content if written is not None else None  # auth: the caller's view
        params: list[dict[str, Any]] = [{"name": "appointment", "resource": version.content}]
        if encounter is not None:
            params.append({"name": "encounter", "resource": encounter})
            position = queue_position(encounter)
            if position is not None:
                params.append({"name": "queue-position", "valuePositiveInt": position})
        return FhirResponse(200, {"resourceType": "Parameters", "parameter": params})


def register(server: FhirServer, rules: Rules) -> None:
    server.hooks.register(HookPoint.BEFORE_COMMIT, CheckIn(rules))
    server.operations.register(Operation("check-in", CheckInOperation(), DEFINITION, types=frozenset({"Appointment"}),
                                         instance=True, affects_state=True))
