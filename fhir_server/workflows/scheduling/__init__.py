"""Scheduling (issue 17 items 4-7): departments and staff as FHIR resources, slots from working hours,
$find / $book with no double booking, the appointment's status workflow, and check-in to an Encounter.

Turned on by FHIR_WORKFLOWS=scheduling (or all). docs/workflows/scheduling.md shows the FHIR calls and the
rule codes; the thresholds are FHIR_SCHEDULING_* settings (fhir_server/config.py), read once per server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.hooks import HookPoint
from fhir_server.workflows.scheduling import checkin, find, shapes, slots
from fhir_server.workflows.scheduling.booking import AppointmentRules
from fhir_server.workflows.scheduling.common import Rules
from fhir_server.workflows.scheduling.noshow import NoShowFlag

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer


def install(server: FhirServer) -> None:
    rules = Rules.of(server.settings)  # this server's (tenant's) thresholds; nothing kept at module level
    server.hooks.register(HookPoint.BEFORE_VALIDATE, shapes.before_validate)
    appointments = AppointmentRules(rules)
    server.hooks.register(HookPoint.BEFORE_VALIDATE, appointments.before_validate)
    server.hooks.register(HookPoint.BEFORE_COMMIT, appointments.before_commit)
    server.hooks.register(HookPoint.BEFORE_COMMIT, NoShowFlag(rules))
    slots.register(server, rules)  # PractitionerRole hours -> Schedule + Slots; $generate-slots
    checkin.register(server, rules)  # arrived -> Encounter with a queue position; $check-in
    find.register(server, rules)  # Appointment/$find, Appointment/$book
