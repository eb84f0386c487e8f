"""CodeSystem/$validate-code (http://hl7.org/fhir/OperationDefinition/CodeSystem-validate-code)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhir_server.rest.request import FhirRequest, FhirResponse
from terminology import store, ucum
from terminology.operations.common import code_found, code_system_for, codings_input
from terminology.params import OperationInput, parameters, value

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

DEFINITION = "http://hl7.org/fhir/OperationDefinition/CodeSystem-validate-code"


def validate_code(req: FhirRequest, repo: Repository, resource_type: str | None,
                  resource_id: str | None) -> FhirResponse:
    inp = OperationInput.of(req)
    codings = codings_input(inp)
    url = inp.string("url") or next((c["system"] for c in codings if c.get("system")), None)
    if resource_id is None and url == ucum.SYSTEM and store.code_system(repo, url) is None:
        return _ucum(codings)
    cs = code_system_for(repo, inp, resource_id, url, system_param="url")
    messages = []
    for coding in codings:
        if resource_id is None and coding.get("system") and coding["system"] != cs.url:
            messages.append(f"The system {coding['system']} is not the code system {cs.url}")
            continue
        concept = store.concept(repo, cs, coding["code"])
        if concept is None:
            messages.append(f"The code {coding['code']} is not in the code system {cs.url}")
            continue
        return code_found(coding, concept.display, concept.designations)
    return parameters(value("result", "Boolean", False), value("message", "String", "; ".join(messages)))


def _ucum(codings: list[dict[str, Any]]) -> FhirResponse:
    """UCUM is a grammar: a code is valid when it parses (terminology/ucum.py); its display is itself."""
    for coding in codings:
        if coding.get("system") in (None, ucum.SYSTEM) and ucum.is_valid(coding["code"]):
            return parameters(value("result", "Boolean", True), value("display", "String", coding["code"]))
    return parameters(value("result", "Boolean", False),
                      value("message", "String", "; ".join(f"{c['code']!r} is not a valid UCUM unit" for c in codings)))
