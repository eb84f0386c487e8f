"""Structural validation of a resource as FHIR R4 (fhir.resources R4B models).

Errors become OperationOutcome issues whose ``expression`` is the FHIRPath of the element at fault,
e.g. ``Patient.name[0].family``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ValidationError

from fhir_server.definitions import resource_types
from fhir_server.errors import INVALID, REQUIRED, STRUCTURE, VALUE, Issue

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@lru_cache(maxsize=256)
def _model_class(resource_type: str) -> type[BaseModel] | None:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        cls: type[BaseModel] = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, ImportError, AttributeError):
        return None
    return cls


def _fhirpath(resource_type: str, loc: tuple[int | str, ...]) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith("function-") and part not in ("__root__",):
            out += f".{part}"
    return out


def _issue_code(error_type: str) -> str:
    if error_type in ("missing",) or error_type.endswith(".missing"):
        return REQUIRED
    if error_type == "extra_forbidden":
        return STRUCTURE
    return VALUE


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
    rid = resource.get("id")
    if rid is not None and (not isinstance(rid, str) or not ID_RE.match(rid)):
        return [Issue(VALUE, f"Invalid id {rid!r}: 1-64 of A-Z a-z 0-9 - .", expression=(f"{resource_type}.id",))]
    model = _model_class(resource_type)
    if model is None:
        return []
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            path = _fhirpath(resource_type, tuple(err["loc"]))
            msg = str(err["msg"]).removeprefix("Value error, ")
            issues.append(Issue(_issue_code(str(err["type"])), f"{path}: {msg}", expression=(path,)))
        return issues
    except (ValueError, TypeError) as exc:  # some fhir.resources validators raise outside pydantic
        return [Issue(VALUE, f"{resource_type}: {exc}", expression=(resource_type,))]
    return []


class ResourceValidator:
    """The validator the repository calls on every write; later issues add profile validation."""

    def validate(self, resource: dict[str, Any], expected_type: str | None = None) -> list[Issue]:
        return validate_resource(resource, expected_type)
