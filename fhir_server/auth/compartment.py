"""Patient compartment membership, decided from the R4 CompartmentDefinition for Patient.

The definition names, per resource type, the search parameters that link a resource to a patient
(Observation: subject, performer). Each parameter's FHIRPath expression starts with the element that
holds the reference (``Observation.subject``), so membership is: any reference inside those elements
points at ``Patient/<id>``. That is decided on the resource itself, on reads and on writes alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from fhir_server.definitions import bundle_resources

_FIRST_ELEMENT = re.compile(r"^\(?\s*([A-Z][A-Za-z]+)\.([a-zA-Z]+)")


@lru_cache(maxsize=1)
def patient_compartment_params() -> dict[str, tuple[str, ...]]:
    """Resource type -> the search parameters linking it to a patient (for SQL filters on the index)."""
    definition = next(cd for cd in bundle_resources("profiles-resources", "CompartmentDefinition")
                      if cd.get("code") == "Patient")
    return {e["code"]: tuple(e["param"]) for e in definition.get("resource", []) if e.get("param")}


@lru_cache(maxsize=1)
def patient_compartment_elements() -> dict[str, frozenset[str]]:
    """Resource type -> the top-level elements whose references place it in a patient's compartment."""
    params: dict[tuple[str, str], str] = {}
    for sp in bundle_resources("search-parameters", "SearchParameter"):
        for base in sp.get("base", []):
            params[(base, sp["code"])] = sp.get("expression") or ""
    out: dict[str, frozenset[str]] = {}
    definition = next(cd for cd in bundle_resources("profiles-resources", "CompartmentDefinition")
                      if cd.get("code") == "Patient")
    for entry in definition.get("resource", []):
        rtype = entry["code"]
        elements: set[str] = set()
        for code in entry.get("param", []):
            for part in params.get((rtype, code), "").split("|"):
                m = _FIRST_ELEMENT.match(part.strip())
                if m and m.group(1) == rtype:
                    elements.add(m.group(2))
        if elements:
            out[rtype] = frozenset(elements)
    return out


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str):
            yield ref
        for item in value.values():
            if isinstance(item, dict | list):
                yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def _is_patient(reference: str, patient_id: str) -> bool:
    ref = reference.split("/_history/")[0]
    return ref == f"Patient/{patient_id}" or ref.endswith(f"/Patient/{patient_id}")


def in_patient_compartment(resource_type: str, content: dict[str, Any], patient_id: str) -> bool:
    if resource_type == "Patient":
        return content.get("id") == patient_id or any(
            _is_patient(r, patient_id) for r in _references(content.get("link")))
    elements = patient_compartment_elements().get(resource_type)
    if not elements:
        return False
    return any(_is_patient(ref, patient_id) for name in elements for ref in _references(content.get(name)))


def patients_of(resource_type: str, content: dict[str, Any]) -> set[str]:
    """The ids of every patient whose compartment holds this resource (audit: the patients concerned)."""
    if resource_type == "Patient":
        out = {content["id"]} if isinstance(content.get("id"), str) else set()
        elements: frozenset[str] = frozenset({"link"})
    else:
        out = set()
        elements = patient_compartment_elements().get(resource_type, frozenset())
    for name in elements:
        for ref in _references(content.get(name)):
            parts = ref.split("/_history/")[0].split("/")
            if len(parts) >= 2 and parts[-2] == "Patient":
                out.add(parts[-1])
    return out
