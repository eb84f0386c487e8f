"""Compartments (compartmentdefinition.html) from the R4 CompartmentDefinitions: ``Patient/123/Observation``
means the Observations whose compartment parameters (``subject``, ``performer``) reference Patient/123."""

from __future__ import annotations

from functools import lru_cache

from fhir_server.definitions import bundle_resources
from fhir_server.errors import NOT_FOUND, FhirError
from fhir_server.search.parser import CompartmentCriterion


@lru_cache(maxsize=1)
def compartment_params() -> dict[str, dict[str, tuple[str, ...]]]:
    """Compartment type -> member resource type -> the parameters that place it in the compartment."""
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for cd in bundle_resources("profiles-resources", "CompartmentDefinition"):
        members = {r["code"]: tuple(r["param"]) for r in cd.get("resource", []) if r.get("param")}
        if len(members) > len(out.get(cd["code"], {})):  # the core definition, not a small example
            out[cd["code"]] = members
    return out


def compartment_criterion(compartment: str, compartment_id: str, resource_type: str) -> CompartmentCriterion:
    members = compartment_params().get(compartment)
    if members is None:
        raise FhirError(404, NOT_FOUND, f"{compartment} is not a compartment")
    params = members.get(resource_type)
    if params is None:
        raise FhirError(404, NOT_FOUND, f"{resource_type} resources are not in the {compartment} compartment")
    refs = tuple(p for p in params if p != "{def}")
    return CompartmentCriterion(compartment, compartment_id, refs, "{def}" in params)
