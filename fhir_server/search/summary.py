"""``_summary`` and ``_elements`` (search.html#summary, #elements): subsets of each returned resource.

Which elements are in the summary comes from the R4 StructureDefinitions (``isSummary``), never a
hand-written list. Subsetted resources carry the SUBSETTED tag so nobody mistakes them for the whole.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir_server.definitions import resource_structure_definitions
from fhir_server.errors import INVALID, FhirError

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "Resource encoded in summary mode"}
SUMMARY_MODES = {"true", "false", "text", "data", "count"}
ALWAYS = {"resourceType", "id", "meta"}


@lru_cache(maxsize=256)
def _top_level(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """(summary element names, mandatory element names) at the top level; choices as ``value[x]`` stems."""
    sd = resource_structure_definitions().get(resource_type, {})
    summary, mandatory = set(), set()
    for el in (sd.get("snapshot") or {}).get("element", []):
        path = el.get("path", "")
        parts = path.split(".")
        if len(parts) != 2:
            continue
        name = parts[1].removesuffix("[x]")
        if el.get("isSummary"):
            summary.add(name)
        if el.get("min", 0) > 0:
            mandatory.add(name)
    return frozenset(summary), frozenset(mandatory)


def _stem(key: str, names: frozenset[str]) -> bool:
    base = key.lstrip("_")
    if base in names:
        return True
    return any(base.startswith(n) and len(base) > len(n) and base[len(n)].isupper() for n in names)


def _tagged(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(t.get("code") == "SUBSETTED" for t in tags):
        tags.append(SUBSETTED)
    meta["tag"] = tags
    return {**resource, "meta": meta}


def check_summary(value: str | None) -> str | None:
    if value is not None and value not in SUMMARY_MODES:
        raise FhirError(400, INVALID, f"_summary must be one of {', '.join(sorted(SUMMARY_MODES))}", ("_summary",))
    return value


def shape(resource: dict[str, Any], summary: str | None, elements: list[str] | None) -> dict[str, Any]:
    """The resource as ``_summary`` / ``_elements`` ask (``summary`` wins when both are given)."""
    rtype = resource.get("resourceType", "")
    if summary in (None, "false", "count") and not elements:
        return resource
    summary_names, mandatory = _top_level(rtype)
    if summary == "true":
        keep = summary_names | mandatory
    elif summary == "text":
        keep = mandatory | {"text"}
    elif summary == "data":
        return _tagged({k: v for k, v in resource.items() if k != "text"})
    else:
        keep = frozenset(elements or ()) | mandatory
    return _tagged({k: v for k, v in resource.items() if k in ALWAYS or _stem(k, keep)})
