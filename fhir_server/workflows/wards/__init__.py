"""The wards' rules (issue 18, item 5; docs/workflows/wards.md): wards, rooms and beds as a Location
hierarchy with operationalStatus; admission, transfer and discharge as Encounter writes that assign and
release beds atomically; ``Location/$census`` for occupancy at any moment."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.hooks import HookPoint, WriteEvent
from fhir_server.workflows.wards.beds import Beds
from fhir_server.workflows.wards.census import register as register_census
from fhir_server.workflows.wards.config import WardCodes

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.repository import Repository


def install(server: FhirServer) -> None:
    ward_codes = WardCodes.load()
    beds = Beds(ward_codes)

    def before_validate(event: WriteEvent, repo: Repository | None) -> None:
        if repo is None:
            return
        if event.resource_type == "Encounter":
            beds.on_encounter(event, repo)
        elif event.resource_type == "Location" and event.resource is not None:
            beds.check_location(event, repo)

    def before_commit(event: WriteEvent, repo: Repository | None) -> None:
        if repo is not None and event.interaction == "delete" and event.resource_type == "Encounter":
            beds.on_encounter(event, repo)  # a delete has no BEFORE_VALIDATE: its bed is freed here

    server.hooks.register(HookPoint.BEFORE_VALIDATE, before_validate)
    server.hooks.register(HookPoint.BEFORE_COMMIT, before_commit)
    register_census(server, ward_codes)
