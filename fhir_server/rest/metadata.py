"""The CapabilityStatement, generated from what this server really supports (never a static file)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fhir_server import __version__
from fhir_server.definitions import resource_types
from fhir_server.rest.operations import OperationRegistry
from fhir_server.storage.repository import instant

TYPE_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type",
                     "create", "search-type"]
SYSTEM_INTERACTIONS = ["transaction", "batch", "history-system"]
def capability_statement(base_url: str, operations: OperationRegistry,
                         search_params: Callable[[str], list[dict[str, Any]]], started: datetime) -> dict[str, Any]:
    """``search_params(type)``: the searchParam entries of that type (from the search registry)."""
    resources = []
    for rtype in sorted(resource_types()):
        entry: dict[str, Any] = {
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "interaction": [{"code": c} for c in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical"],
            "searchParam": search_params(rtype),
        }
        ops = [{"name": o.name, "definition": o.definition} for o in operations.operations.values()
               if o.types is None or rtype in o.types]
        if ops:
            entry["operation"] = ops
        resources.append(entry)
    rest: dict[str, Any] = {
        "mode": "server",
        "resource": resources,
        "interaction": [{"code": c} for c in SYSTEM_INTERACTIONS],
    }
    system_ops = [{"name": o.name, "definition": o.definition} for o in operations.operations.values() if o.system]
    if system_ops:
        rest["operation"] = system_ops
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(started.astimezone(UTC)),
        "publisher": "fhir-server",
        "kind": "instance",
        "software": {"name": "fhir-server", "version": __version__},
        "implementation": {"description": "Hospital FHIR interoperability server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [rest],
    }


def with_security(statement: dict[str, Any], security: dict[str, Any]) -> dict[str, Any]:
    """The statement with ``rest[0].security`` (SMART on FHIR: fhir_server.auth.discovery) added."""
    rest = {**statement["rest"][0], "security": security}
    return {**statement, "rest": [rest, *statement["rest"][1:]]}
