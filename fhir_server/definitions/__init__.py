"""The official FHIR R4 definitions shipped with the package (see PROVENANCE.md)."""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources
from typing import Any

import orjson


@lru_cache(maxsize=8)
def load_bundle(name: str) -> dict[str, Any]:
    """Load one of the bundled definition Bundles, e.g. ``search-parameters``."""
    data = resources.files(__name__).joinpath(f"{name}.json.gz").read_bytes()
    result: dict[str, Any] = orjson.loads(gzip.decompress(data))
    return result


def bundle_resources(name: str, resource_type: str | None = None) -> list[dict[str, Any]]:
    out = []
    for entry in load_bundle(name).get("entry", []):
        res = entry.get("resource", {})
        if resource_type is None or res.get("resourceType") == resource_type:
            out.append(res)
    return out


@lru_cache(maxsize=1)
def resource_structure_definitions() -> dict[str, dict[str, Any]]:
    """Concrete resource types of R4 -> their base StructureDefinition."""
    out: dict[str, dict[str, Any]] = {}
    for sd in bundle_resources("profiles-resources", "StructureDefinition"):
        if sd.get("kind") == "resource" and sd.get("derivation") == "specialization" \
                and not sd.get("abstract"):
            out[sd["type"]] = sd
    return out


@lru_cache(maxsize=1)
def resource_types() -> frozenset[str]:
    return frozenset(resource_structure_definitions())


@lru_cache(maxsize=1)
def type_structure_definitions() -> dict[str, dict[str, Any]]:
    """Datatypes of R4 (complex and primitive) -> their StructureDefinition."""
    out: dict[str, dict[str, Any]] = {}
    for sd in bundle_resources("profiles-types", "StructureDefinition"):
        if sd.get("derivation") == "specialization" or sd.get("kind") in ("primitive-type",):
            out[sd["type"]] = sd
    return out
