"""The fhir.resources R4B models as a second opinion on R4 content.

Not on the write path: the R4 element tree (``structure.py``) checks everything these models check (structure,
datatypes, cardinality, primitive syntax, one type per choice, calendar dates) and more (JSON types, arrays,
required bindings), at about a seventh of the cost, and it follows R4 where R4B differs (MedicinalProduct and
the other R4-only types, elements renamed between R4 and R4B). The tests use ``r4b_issues`` to show that the
R4 validator rejects everything the R4B models reject, apart from those R4/R4B differences.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ValidationError

from fhir_server.errors import REQUIRED, STRUCTURE, VALUE, Issue


@lru_cache(maxsize=256)
def r4b_model(resource_type: str) -> type[BaseModel] | None:
    """The R4B model class for a resource type, or None (R4-only types such as MedicinalProduct)."""
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
        elif not part.startswith("function-") and part != "__root__":
            out += f".{part}"
    return out


def _issue_code(error_type: str) -> str:
    if error_type == "missing" or error_type.endswith(".missing"):
        return REQUIRED
    return STRUCTURE if error_type == "extra_forbidden" else VALUE


def r4b_issues(resource: dict[str, Any]) -> list[Issue]:
    """What the R4B model of ``resource["resourceType"]`` says about it (nothing when there is no model)."""
    resource_type = str(resource.get("resourceType"))
    model = r4b_model(resource_type)
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
