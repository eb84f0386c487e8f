"""CodeSystem/$subsumes (http://hl7.org/fhir/OperationDefinition/CodeSystem-subsumes): A against B, by is-a."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.errors import INVALID, NOT_FOUND, FhirError
from fhir_server.rest.request import FhirRequest, FhirResponse
from terminology import store
from terminology.operations.common import code_system_for, coding_input
from terminology.params import OperationInput, parameters, value

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

DEFINITION = "http://hl7.org/fhir/OperationDefinition/CodeSystem-subsumes"


def subsumes(req: FhirRequest, repo: Repository, resource_type: str | None, resource_id: str | None) -> FhirResponse:
    inp = OperationInput.of(req)
    a = coding_input(inp, code="codeA", coding="codingA")
    b = coding_input(inp, code="codeB", coding="codingB")
    assert a is not None and b is not None
    system = inp.string("system") or a.get("system") or b.get("system")
    for name, coding in (("codingA", a), ("codingB", b)):
        if coding.get("system") and system and coding["system"] != system:
            raise FhirError(400, INVALID, "codingA and codingB must be from the same code system", (name,))
    cs = code_system_for(repo, inp, resource_id, system)
    for name, coding in (("codeA", a), ("codeB", b)):
        if store.concept(repo, cs, coding["code"]) is None:
            raise FhirError(404, NOT_FOUND, f"The code {coding['code']} is not in the code system {cs.url}", (name,))
    if a["code"] == b["code"]:
        outcome = "equivalent"
    elif store.subsumes(repo, cs, a["code"], b["code"]):
        outcome = "subsumes"
    elif store.subsumes(repo, cs, b["code"], a["code"]):
        outcome = "subsumed-by"
    else:
        outcome = "not-subsumed"
    return parameters(value("outcome", "Code", outcome))
