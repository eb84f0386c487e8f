"""The CapabilityStatement, generated from what this server really supports (never a static file)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from fhir_server import __version__
from fhir_server.definitions import bundle_resources, resource_types
from fhir_server.rest.operations import OperationRegistry
from fhir_server.storage.repository import instant

TYPE_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type",
                     "create", "search-type"]
SYSTEM_INTERACTIONS = ["transaction", "batch", "history-system"]
# Search parameters every type answers to, with their definitions' canonical URLs.
COMMON_SEARCH = [("_id", "token", "http://hl7.org/fhir/SearchParameter/Resource-id")]


@lru_cache(maxsize=1)
def _definitions_by_code() -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for sp in bundle_resources("search-parameters", "SearchParameter"):
        for base in sp.get("base", []):
            out[(base, sp["code"])] = sp
    return out


def search_params_for(resource_type: str, supported: set[str]) -> list[dict[str, Any]]:
    out = [{"name": n, "type": t, "definition": d} for n, t, d in COMMON_SEARCH if n in supported]
    defs = _definitions_by_code()
    for code in sorted(supported):
        sp = defs.get((resource_type, code))
        if sp is not None:
            out.append({"name": code, "type": sp["type"], "definition": sp["url"]})
    return out


def capability_statement(base_url: str, operations: OperationRegistry, supported_search: set[str],
                         started: datetime) -> dict[str, Any]:
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
            "searchParam": search_params_for(rtype, supported_search),
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
