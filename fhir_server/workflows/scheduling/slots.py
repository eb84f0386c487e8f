"""A Schedule per PractitionerRole and its Slots, generated from the role's hours (issue 17 item 5).

Written when a PractitionerRole with ``availableTime`` is created or changed (for the next
FHIR_SCHEDULING_HORIZON_DAYS) and by ``PractitionerRole/[id]/$generate-slots?start&end``. Only the FUTURE FREE
slots of the window change: a free slot the new hours no longer give is withdrawn (deleted; kept as
``busy-unavailable`` when an old appointment still refers to it), a slot they give that is missing is created
``free``; booked (busy) slots and the past stay as they are, and no new slot overlaps a busy one.

The Schedule and its Slots are derived data the server keeps in step with the role: the caller's right is
checked on the PractitionerRole (writing it, or updating it for the operation); the slots themselves are
written as the system, so a front desk allowed to record a doctor's leave need not hold Slot deletes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from fhir_server.errors import INVALID, FhirError
from fhir_server.hooks import WriteEvent
from fhir_server.rest.operations import Operation
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository
from fhir_server.workflows.scheduling.common import (
    Rules,
    extension_url,
    fhir_instant,
    find,
    now,
    overlaps,
    parse_instant,
    ref_id,
)
from fhir_server.workflows.scheduling.hours import slot_times
from fhir_server.workflows.scheduling.shapes import daily_cap, slot_minutes

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

DEFINITION = "https://fhir-server.dev/OperationDefinition/PractitionerRole-generate-slots"
SYSTEM = as_system("Schedule and Slots derived from a PractitionerRole the caller may write")
SLOT_FIELDS = ("start", "end", "serviceType", "specialty")
MAX_WINDOW_DAYS = 366


@dataclass
class Outcome:
    schedule: str
    created: int = 0
    withdrawn: int = 0
    kept_busy: int = 0


def _service(repo: Repository, role: dict[str, Any]) -> dict[str, Any] | None:
    for ref in role.get("healthcareService") or []:
        sid = ref_id(ref, "HealthcareService")
        current = repo.current("HealthcareService", sid) if sid else None
        if current is not None and current.content is not None and not current.deleted:
            return current.content
    return None


def schedule_for(repo: Repository, role_id: str, role: dict[str, Any], service: dict[str, Any] | None,
                 rules: Rules) -> dict[str, Any]:
    """The role's Schedule, created or brought in line with the role (actors, specialty, service types)."""
    found = find(repo, "Schedule", [("actor", f"PractitionerRole/{role_id}")], limit=1)
    actors = [{"reference": f"PractitionerRole/{role_id}"}]
    if (role.get("practitioner") or {}).get("reference"):
        actors.append({"reference": role["practitioner"]["reference"]})
    start = now()
    wanted: dict[str, Any] = {
        "resourceType": "Schedule", "active": role.get("active") is not False, "actor": actors,
        "planningHorizon": {"start": fhir_instant(start, rules.zone),
                            "end": fhir_instant(start + timedelta(days=rules.horizon_days), rules.zone)}}
    if role.get("specialty"):
        wanted["specialty"] = role["specialty"]
    if service is not None and service.get("type"):
        wanted["serviceType"] = service["type"]
    if found:
        current = found[0]
        same = all(current.get(k) == wanted.get(k) for k in ("active", "actor", "specialty", "serviceType"))
        if same:
            return current
        return repo.update("Schedule", current["id"], {**current, **wanted})[0].content or {}
    return repo.create("Schedule", wanted).content or {}


def _times(slot: dict[str, Any]) -> tuple[datetime, datetime]:
    return parse_instant(slot.get("start"), "Slot.start"), parse_instant(slot.get("end"), "Slot.end")


def regenerate(repo: Repository, rules: Rules, role_id: str, role: dict[str, Any] | None, start: datetime,
               end: datetime) -> Outcome:
    """Bring the role's future free slots in [start, end) in line with its hours (``role`` None: deleted)."""
    with repo.acting_as(SYSTEM):
        start = max(start, now())
        if role is None:
            found = find(repo, "Schedule", [("actor", f"PractitionerRole/{role_id}")], limit=1)
            if not found:
                return Outcome("")
            schedule, service, desired = found[0], None, []
        else:
            service = _service(repo, role)
            schedule = schedule_for(repo, role_id, role, service, rules)
            minutes = (slot_minutes(service) if service is not None else None) or rules.slot_minutes
            cap = daily_cap(role) or rules.daily_cap
            desired = slot_times(role, rules, minutes, cap, start, end)
        outcome = Outcome(f"Schedule/{schedule['id']}")
        existing = find(repo, "Slot", [("schedule", outcome.schedule), ("start", f"ge{fhir_instant(start)}"),
                                       ("start", f"lt{fhir_instant(end)}")])
        withdrawn_mark = extension_url("generated-by")
        by_time = {_times(s): s for s in existing}
        busy = [_times(s) for s in existing if s.get("status") not in ("free", None)
                and not _withdrawn(s, withdrawn_mark)]
        outcome.kept_busy = len(busy)
        desired_set = set(desired)
        stale = [s for t, s in by_time.items() if s.get("status") == "free" and t not in desired_set]
        outcome.withdrawn = _withdraw(repo, stale, withdrawn_mark)
        template = {k: v for k, v in (("specialty", (role or {}).get("specialty")),
                                      ("serviceType", (service or {}).get("type"))) if v}
        for slot_start, slot_end in desired:
            have = by_time.get((slot_start, slot_end))
            if have is not None and have.get("status") == "free":
                continue
            if have is not None and _withdrawn(have, withdrawn_mark):  # given again: free again
                repo.update("Slot", have["id"], {**{k: v for k, v in have.items() if k != "comment"},
                                                 "status": "free", **template})
                outcome.created += 1
                continue
            if any(overlaps(slot_start, slot_end, b0, b1) for b0, b1 in busy):
                continue
            repo.create("Slot", {"resourceType": "Slot", "schedule": {"reference": outcome.schedule},
                                 "status": "free", "start": fhir_instant(slot_start, rules.zone),
                                 "end": fhir_instant(slot_end, rules.zone), **template}, trusted=True)
            outcome.created += 1
        return outcome


def _withdrawn(slot: dict[str, Any], mark: str) -> bool:
    return slot.get("status") == "busy-unavailable" and any(
        e.get("url") == mark and e.get("valueCode") == "withdrawn" for e in slot.get("extension") or [])


def _withdraw(repo: Repository, slots: list[dict[str, Any]], mark: str) -> int:
    """Delete free slots nobody refers to; mark the others busy-unavailable (a cancelled appointment's)."""
    referred: set[str] = set()
    for i in range(0, len(slots), 50):
        refs = ",".join(f"Slot/{s['id']}" for s in slots[i:i + 50])
        for appointment in find(repo, "Appointment", [("slot", refs)]):
            referred.update(ref_id(r, "Slot") or "" for r in appointment.get("slot") or [])
    for slot in slots:
        if slot["id"] in referred:
            repo.update("Slot", slot["id"], {**slot, "status": "busy-unavailable",
                                             "comment": "withdrawn: no longer in the practitioner's hours",
                                             "extension": [{"url": mark, "valueCode": "withdrawn"}]})
        else:
            repo.delete("Slot", slot["id"])
    return len(slots)


HOURS = ("availableTime", "notAvailable", "healthcareService", "active", "period", "specialty", "extension",
         "practitioner")


class RoleHook:
    """BEFORE_COMMIT on PractitionerRole: a change of hours, leave or service regenerates the next days."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules

    def __call__(self, event: WriteEvent, repo: Repository | None) -> None:
        if event.resource_type != "PractitionerRole" or repo is None or event.resource_id is None:
            return
        before = event.previous.content if event.previous is not None and not event.previous.deleted else None
        after = event.resource
        if not (after or {}).get("availableTime") and not (before or {}).get("availableTime"):
            return
        if before is not None and after is not None and all(before.get(k) == after.get(k) for k in HOURS):
            return
        start = now()
        regenerate(repo, self.rules, event.resource_id, after, start, start + timedelta(days=self.rules.horizon_days))


class GenerateSlots:
    """``PractitionerRole/[id]/$generate-slots?start=YYYY-MM-DD&end=YYYY-MM-DD`` (end exclusive)."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules

    def __call__(self, req: FhirRequest, repo: Repository, rtype: str | None, rid: str | None) -> FhirResponse:
        if rid is None:
            raise FhirError(400, INVALID, "$generate-slots runs on one role: PractitionerRole/[id]/$generate-slots")
        current = repo.current("PractitionerRole", rid, for_update=True)
        role = repo.read("PractitionerRole", rid)  # 403 / 404 / 410 as for a read
        repo.access.check_write("PractitionerRole", role.content, current)  # auth: may change this role
        params = dict(req.query)
        if req.method == "POST" and req.body:
            body = req.json_body()
            for p in body.get("parameter") or [] if isinstance(body, dict) else []:
                value = next((v for k, v in p.items() if k.startswith("value")), None)
                if value is not None:
                    params[str(p.get("name"))] = str(value)
        start = self._day(first, "start") if (first := params.get("start")) else now()
        end = self._day(last, "end") if (last := params.get("end")) else start + timedelta(days=self.rules.horizon_days)
        if end <= start or end - start > timedelta(days=MAX_WINDOW_DAYS):
            raise FhirError(400, INVALID, f"end must be after start, at most {MAX_WINDOW_DAYS} days later", ("end",))
        outcome = regenerate(repo, self.rules, rid, role.content, start, end)
        return FhirResponse(200, {"resourceType": "Parameters", "parameter": [
            {"name": "schedule", "valueReference": {"reference": outcome.schedule}},
            {"name": "created", "valueInteger": outcome.created},
            {"name": "withdrawn", "valueInteger": outcome.withdrawn},
            {"name": "busy", "valueInteger": outcome.kept_busy}]})

    def _day(self, value: str, name: str) -> datetime:
        if "T" in value:
            return parse_instant(value, name)
        try:
            return datetime.combine(datetime.fromisoformat(value).date(), datetime.min.time(), self.rules.zone)
        except ValueError:
            raise FhirError(400, INVALID, f"{name} {value!r} is not a date", (name,)) from None


def register(server: FhirServer, rules: Rules) -> None:
    from fhir_server.hooks import HookPoint

    server.hooks.register(HookPoint.BEFORE_COMMIT, RoleHook(rules))
    server.operations.register(Operation("generate-slots", GenerateSlots(rules), DEFINITION,
                                         types=frozenset({"PractitionerRole"}), instance=True, affects_state=True))
