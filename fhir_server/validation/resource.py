"""Validation of an incoming resource as FHIR R4, with the R4 StructureDefinitions deciding.

The R4 element tree (``structure.py``) is authoritative and the only check on the write path; the R4B
models (``r4b.py``) are kept as a test oracle (see there for why they are not run on every write).
Errors become OperationOutcome issues whose ``expression`` is the FHIRPath of the element at fault,
e.g. ``Patient.name[0].family``.
"""

from __future__ import annotations

import re
from typing import Any

from fhir_server.definitions import resource_types
from fhir_server.errors import INVALID, REQUIRED, STRUCTURE, TOO_COSTLY, Issue
from fhir_server.validation.structure import validate_structure

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MAX_ISSUES = 500  # a broken bulk upload should not answer with a megabyte of OperationOutcome


def validate_resource(resource: Any, expected_type: str | None = None) -> list[Issue]:
    """Return the issues found in ``resource`` (empty when valid)."""
    if not isinstance(resource, dict):
        return [Issue(STRUCTURE, "The body must be a JSON object holding a FHIR resource")]
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return [Issue(REQUIRED, "The resource has no resourceType", expression=("resourceType",))]
    if resource_type not in resource_types():
        return [Issue(INVALID, f"'{resource_type}' is not a FHIR R4 resource type",
                      expression=("resourceType",))]
    if expected_type is not None and resource_type != expected_type:
        return [Issue(INVALID, f"resourceType '{resource_type}' does not match the URL's type '{expected_type}'",
                      expression=("resourceType",))]
    issues = validate_structure(resource)
    if len(issues) > MAX_ISSUES:
        more = len(issues) - MAX_ISSUES
        issues = [*issues[:MAX_ISSUES], Issue(TOO_COSTLY, f"{more} more issues were found and not listed",
                                              severity="information")]
    return issues


class ResourceValidator:
    """The validator the repository calls on every write; later issues add profile validation."""

    def validate(self, resource: dict[str, Any], expected_type: str | None = None) -> list[Issue]:
        return validate_resource(resource, expected_type)
