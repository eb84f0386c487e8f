"""Departments, services and staff as FHIR resources (issue 17 item 4), checked where the rules rely on them.

- A department is an ``Organization`` typed ``dept`` (organization-type) and ``partOf`` the hospital.
- What it offers is a ``HealthcareService`` ``providedBy`` the department; the ``slot-duration`` extension
  (a UCUM ``Duration`` in min or h) sets the length of the slots of the roles that give it.
- A member of staff is a ``Practitioner``; each post is a ``PractitionerRole`` (practitioner, specialty,
  organization = the department, healthcareService), whose ``availableTime`` entries are the working hours
  (days of week and local start/end times, or allDay = clinic hours) and ``notAvailable`` entries the leave
  (``during`` a period). The ``daily-cap`` extension (positiveInt) caps its appointments a day.

Refusals are 422 rule violations naming the element (docs/workflows/scheduling.md lists the codes).
"""

from __future__ import annotations

from datetime import time
from typing import Any

from fhir_server.hooks import WriteEvent
from fhir_server.storage.repository import Repository
from fhir_server.workflows.rules import rule_violation
from fhir_server.workflows.scheduling.common import UCUM, extension_url, parse_instant, ref_id

ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES = {"min": 1, "h": 60}


def extension(resource: dict[str, Any], name: str) -> dict[str, Any] | None:
    url = extension_url(name)
    return next((e for e in resource.get("extension") or [] if isinstance(e, dict) and e.get("url") == url), None)


def slot_minutes(service: dict[str, Any]) -> int | None:
    """The service's slot length in minutes (its slot-duration extension), None when it sets none."""
    ext = extension(service, "slot-duration")
    if ext is None:
        return None
    value = ext.get("valueDuration") or {}
    factor = MINUTES.get(str(value.get("code"))) if value.get("system") == UCUM else None
    amount = value.get("value")
    if factor is None or not isinstance(amount, int | float) or not 5 <= amount * factor <= 480:
        raise rule_violation(422, "service-slot-duration", "The slot-duration extension must be a UCUM Duration "
                             "in min or h, between 5 minutes and 8 hours", ("HealthcareService.extension",))
    return int(amount * factor)


def daily_cap(role: dict[str, Any]) -> int | None:
    ext = extension(role, "daily-cap")
    if ext is None:
        return None
    value = ext.get("valuePositiveInt")
    if not isinstance(value, int) or value < 1:
        raise rule_violation(422, "role-daily-cap", "The daily-cap extension must be a valuePositiveInt",
                             ("PractitionerRole.extension",))
    return value


def _is_department(org: dict[str, Any]) -> bool:
    return any(c.get("system") == ORG_TYPE and c.get("code") == "dept"
               for t in org.get("type") or [] for c in (t.get("coding") or []))


def check_organization(org: dict[str, Any]) -> None:
    if _is_department(org) and not (org.get("partOf") or {}).get("reference"):
        raise rule_violation(422, "department-part-of", "A department (Organization.type dept) must be partOf "
                             "its hospital's Organization", ("Organization.partOf",))


def check_service(service: dict[str, Any]) -> None:
    if ref_id(service.get("providedBy"), "Organization") is None:
        raise rule_violation(422, "service-provided-by", "A HealthcareService is providedBy its department "
                             "(an Organization reference)", ("HealthcareService.providedBy",))
    slot_minutes(service)


def hours(entry: dict[str, Any], where: str) -> tuple[time, time] | None:
    """An availableTime entry's (start, end) local times; None for allDay."""
    if entry.get("allDay") is True:
        return None
    try:
        start = time.fromisoformat(str(entry.get("availableStartTime")))
        end = time.fromisoformat(str(entry.get("availableEndTime")))
    except ValueError:
        raise rule_violation(422, "role-available-time", "availableTime needs availableStartTime and "
                             "availableEndTime (or allDay)", (where,)) from None
    if end <= start:
        raise rule_violation(422, "role-available-time", "availableEndTime must be after availableStartTime",
                             (f"{where}.availableEndTime",))
    return start, end


def check_role(role: dict[str, Any]) -> None:
    if not (role.get("practitioner") or {}).get("reference"):
        raise rule_violation(422, "role-practitioner", "A PractitionerRole names its Practitioner (who is booked)",
                             ("PractitionerRole.practitioner",))
    for i, entry in enumerate(role.get("availableTime") or []):
        where = f"PractitionerRole.availableTime[{i}]"
        days = entry.get("daysOfWeek") or []
        if not days or any(d not in DAYS for d in days):
            raise rule_violation(422, "role-available-time", "availableTime.daysOfWeek lists the working days",
                                 (f"{where}.daysOfWeek",))
        hours(entry, where)
    for i, entry in enumerate(role.get("notAvailable") or []):
        where = f"PractitionerRole.notAvailable[{i}].during"
        during = entry.get("during") or {}
        start = parse_instant(during.get("start"), f"{where}.start") if during.get("start") else None
        if start is None:
            raise rule_violation(422, "role-not-available", "Leave (notAvailable) needs during.start",
                                 (f"{where}.start",))
        if during.get("end") and parse_instant(during["end"], f"{where}.end") < start:
            raise rule_violation(422, "role-not-available", "Leave ends before it starts", (f"{where}.end",))
    daily_cap(role)


CHECKS = {"Organization": check_organization, "HealthcareService": check_service, "PractitionerRole": check_role}


def before_validate(event: WriteEvent, repo: Repository | None) -> None:
    check = CHECKS.get(event.resource_type)
    if check is not None and event.resource is not None:
        check(event.resource)
