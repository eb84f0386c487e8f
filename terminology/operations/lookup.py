"""CodeSystem/$lookup (http://hl7.org/fhir/OperationDefinition/CodeSystem-lookup): a concept's details."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhir_server.errors import NOT_FOUND, FhirError
from fhir_server.rest.request import FhirRequest, FhirResponse
from terminology import store
from terminology.operations.common import code_system_for, coding_input
from terminology.params import OperationInput, parameters, value

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

DEFINITION = "http://hl7.org/fhir/OperationDefinition/CodeSystem-lookup"


def lookup(req: FhirRequest, repo: Repository, resource_type: str | None, resource_id: str | None) -> FhirResponse:
    inp = OperationInput.of(req)
    coding = coding_input(inp)
    assert coding is not None
    field = "coding" if inp.coding("coding") else "system"
    cs = code_system_for(repo, inp, resource_id, coding.get("system"), system_param=field)
    concept = store.concept(repo, cs, coding["code"])
    if concept is None:
        raise FhirError(404, NOT_FOUND, f"The code {coding['code']} is not in the code system {cs.url}",
                        ("coding" if field == "coding" else "code",))
    wanted = set(inp.strings("property"))

    def want(code: str) -> bool:
        return not wanted or code in wanted or "*" in wanted

    out: list[dict[str, Any] | None] = [value("name", "String", cs.name or cs.url),
                                        value("version", "String", cs.version),
                                        value("display", "String", concept.display)]
    if want("designation"):
        out += [_designation(d) for d in concept.designations]
    if concept.definition and want("definition"):
        out.append(_property("definition", {"valueString": concept.definition}))
    for prop in concept.properties:
        if want(prop.get("code", "")):
            out.append(_property(prop["code"], {k: v for k, v in prop.items() if k.startswith("value")}))
    if want("parent"):
        out += [_property("parent", {"valueCode": p}) for p in concept.parents]
    if want("child"):
        out += [_property("child", {"valueCode": c}) for c in store.children(repo, cs, concept.code)]
    return parameters(*out)


def _designation(d: dict[str, Any]) -> dict[str, Any]:
    part: list[dict[str, Any]] = []
    if d.get("language"):
        part.append({"name": "language", "valueCode": d["language"]})
    if d.get("use"):
        part.append({"name": "use", "valueCoding": d["use"]})
    part.append({"name": "value", "valueString": d.get("value", "")})
    return {"name": "designation", "part": part}


def _property(code: str, val: dict[str, Any]) -> dict[str, Any]:
    part: list[dict[str, Any]] = [{"name": "code", "valueCode": code}]
    if val:
        key, v = next(iter(val.items()))
        part.append({"name": "value", key: v})
    return {"name": "property", "part": part}
