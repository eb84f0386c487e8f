"""The terminology operations (R4 terminology module), one file each, registered on a FhirServer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.rest.operations import Operation
from fhir_server.rest.request import FhirRequest, FhirResponse
from terminology import cache, sync
from terminology.operations import (
    codesystem_validate_code,
    expand,
    lookup,
    subsumes,
    translate,
    valueset_validate_code,
)

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.repository import Repository


def _validate_code(req: FhirRequest, repo: Repository, resource_type: str | None,
                   resource_id: str | None) -> FhirResponse:
    """$validate-code is one name for two operations: the CodeSystem one and the ValueSet one."""
    if resource_type == "CodeSystem":
        return codesystem_validate_code.validate_code(req, repo, resource_type, resource_id)
    return valueset_validate_code.validate_code(req, repo, resource_type, resource_id)


def register(server: FhirServer) -> None:
    sync.register(server.hooks)
    cache.register(server.hooks)  # stored CodeSystem/ValueSet writes invalidate the fast path everywhere
    ops = server.operations
    cs, vs = frozenset({"CodeSystem"}), frozenset({"ValueSet"})
    ops.register(Operation("lookup", lookup.lookup, lookup.DEFINITION, types=cs, instance=True, read_only=True))
    ops.register(Operation("subsumes", subsumes.subsumes, subsumes.DEFINITION, types=cs, instance=True, read_only=True))
    ops.register(Operation("expand", expand.expand, expand.DEFINITION, types=vs, instance=True, read_only=True))
    ops.register(Operation("validate-code", _validate_code, valueset_validate_code.DEFINITION,
                           types=cs | vs, instance=True, read_only=True))
    ops.register(Operation("translate", translate.translate, translate.DEFINITION,
                           types=frozenset({"ConceptMap"}), instance=True, read_only=True))
