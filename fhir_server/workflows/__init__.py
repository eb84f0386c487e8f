"""The hospital's own rules, enforced in the server whichever app writes (issues 17 and 18).

Each area (front desk, scheduling, clinic, notifications, pharmacy, laboratory, wards, billing) is a
package here with an ``install(server)`` that registers its write hooks (fhir_server/hooks.py) and
operations (``server.operations``) on one FhirServer. ``FHIR_WORKFLOWS`` chooses the areas; rules are
expressed as FHIR resources, profiles and operations, never as side tables or a second API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fhir_server.errors import FhirError

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

# area -> module with ``install(server: FhirServer) -> None`` (each area adds its own line).
AREAS: dict[str, str] = {
    "pharmacy": "fhir_server.workflows.pharmacy",
    "clinic": "fhir_server.workflows.clinic",
    "notifications": "fhir_server.workflows.notifications",
    "billing": "fhir_server.workflows.billing",
    "scheduling": "fhir_server.workflows.scheduling",
    "frontdesk": "fhir_server.workflows.frontdesk",
    "laboratory": "fhir_server.workflows.laboratory",
    "wards": "fhir_server.workflows.wards",
    "reports": "fhir_server.workflows.reports",
}


def enabled_areas(setting: str) -> list[str]:
    names = [n.strip() for n in setting.split(",") if n.strip()]
    if names == ["all"]:
        return list(AREAS)
    unknown = [n for n in names if n not in AREAS]
    if unknown:
        raise FhirError(500, "exception", f"FHIR_WORKFLOWS names unknown areas: {', '.join(unknown)} "
                                          f"(known: {', '.join(AREAS)})")
    return names


def install(server: FhirServer) -> None:
    for name in enabled_areas(server.settings.workflows):
        importlib.import_module(AREAS[name]).install(server)
