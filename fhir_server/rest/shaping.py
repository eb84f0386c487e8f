"""``_summary`` and ``_elements`` (search.html#summary, #elements): a subset of a resource, marked SUBSETTED.

Which elements are "summary" comes from the R4 StructureDefinitions (``isSummary``), never a hand list.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir_server.definitions import resource_structure_definitions
from fhir_server.errors import INVALID, FhirError

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}
ALWAYS = ("resourceType", "id", "meta")
SUMMARY_MODES = ("true", "false", "text", "data", "count")


@lru_cache(maxsize=256)
def summary_elements(resource_type: str) -> frozenset[str]:
    """Top-level JSON names of the elements marked isSummary (choice types expanded: value[x] -> valueQuantity)."""
    sd = resource_structure_definitions().get(resource_type)
    if sd is None:
        return frozenset()
    names: set[str] = set()
    for element in sd.get("snapshot", {}).get("element", []):
        parts = element["path"].split(".")
        if len(parts) != 2 or not element.get("isSummary"):
            continue
        name = parts[1]
        if name.endswith("[x]"):
            stem = name[:-3]
            names.update(stem + t["code"][0].upper() + t["code"][1:] for t in element.get("type", []))
        else:
            names.add(name)
    return frozenset(names)


@lru_cache(maxsize=256)
def mandatory_elements(resource_type: str) -> frozenset[str]:
    sd = resource_structure_definitions().get(resource_type)
    out: set[str] = set()
    for element in (sd or {}).get("snapshot", {}).get("element", []):
        parts = element["path"].split(".")
        if len(parts) == 2 and element.get("min", 0) >= 1 and not parts[1].endswith("[x]"):
            out.add(parts[1])
    return frozenset(out)


def check_summary(value: str | None) -> str | None:
    if value is not None and value not in SUMMARY_MODES:
        raise FhirError(400, INVALID, f"_summary must be one of {', '.join(SUMMARY_MODES)}, not {value!r}",
                        ("_summary",))
    return value


def _mark(resource: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    out = {k: v for k, v in resource.items() if k in keep or k.lstrip("_") in keep}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return out


def shape(resource: dict[str, Any], summary: str | None, elements: str | None) -> dict[str, Any]:
    """The resource as ``_summary`` / ``_elements`` ask (``_summary`` wins when both are given)."""
    summary = check_summary(summary)
    rtype = resource.get("resourceType", "")
    if summary in (None, "false"):
        if not elements:
            return resource
        wanted = {e.strip().split(".")[-1] if "." in e and e.split(".")[0] == rtype else e.strip()
                  for e in elements.split(",") if e.strip()}
        return _mark(resource, wanted | set(ALWAYS) | mandatory_elements(rtype))
    if summary == "true":
        return _mark(resource, set(summary_elements(rtype)) | set(ALWAYS))
    if summary == "text":
        return _mark(resource, {"text", *ALWAYS} | mandatory_elements(rtype))
    if summary == "data":
        return _mark(resource, set(resource) - {"text"})
    return resource  # count: only meaningful for search; the resource itself is untouched
