"""The front desk (issue 17 items 1-3): registration with an MRN and checked national identifiers, the master
patient index (Patient/$match, possible duplicates on create), deactivation instead of deletion, and
Patient/$merge / $unmerge. docs/workflows/frontdesk.md shows the FHIR calls and the rule codes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.hooks import HookPoint
from fhir_server.rest.operations import Operation
from fhir_server.workflows.frontdesk.merge import (
    MERGE_DEFINITION,
    UNMERGE_DEFINITION,
    Merge,
    Unmerge,
    refuse_delete_with_data,
)
from fhir_server.workflows.frontdesk.mpi import DEFINITION as MATCH_DEFINITION
from fhir_server.workflows.frontdesk.mpi import Match, PatientIndex
from fhir_server.workflows.frontdesk.registration import Registration

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer


def install(server: FhirServer) -> None:
    s = server.settings
    registration = Registration(s.mrn_system, s.mrn_timezone)
    index = PatientIndex(s.mrn_system)
    server.hooks.register(HookPoint.BEFORE_VALIDATE, registration.before_validate)
    server.hooks.register(HookPoint.BEFORE_COMMIT, refuse_delete_with_data)
    server.hooks.register(HookPoint.BEFORE_COMMIT, registration.before_commit)
    server.hooks.register(HookPoint.BEFORE_COMMIT, index.before_commit)
    patient = frozenset({"Patient"})
    server.operations.register(Operation("match", Match(s.mrn_system, s.max_page_size), MATCH_DEFINITION,
                                         types=patient, read_only=True))
    server.operations.register(Operation("merge", Merge(), MERGE_DEFINITION, types=patient, affects_state=True))
    server.operations.register(Operation("unmerge", Unmerge(), UNMERGE_DEFINITION, types=patient,
                                         affects_state=True))
