"""ConceptMap/$translate (http://hl7.org/fhir/OperationDefinition/ConceptMap-translate)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhir_server.errors import REQUIRED, FhirError
from fhir_server.rest.request import FhirRequest, FhirResponse
from terminology import store
from terminology.operations.common import codings_input
from terminology.params import OperationInput, parameters, value

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

DEFINITION = "http://hl7.org/fhir/OperationDefinition/ConceptMap-translate"
_NO_MATCH = ("unmatched", "disjoint")


def _maps(repo: Repository, inp: OperationInput, resource_id: str | None, system: str | None,
          reverse: bool) -> list[dict[str, Any]]:
    if resource_id is not None:
        content = repo.read("ConceptMap", resource_id).content
        assert content is not None
        return [content]
    given = inp.resource("conceptMap")
    if given is not None:
        return [given]
    url = inp.string("url")
    if url:
        return [store.by_url(repo, "ConceptMap", url, inp.string("conceptMapVersion"))]
    if not system:
        raise FhirError(400, REQUIRED, "One of url, conceptMap or system is required", ("url",))
    ids = repo.find_ids("ConceptMap", [("target-system" if reverse else "source-system", system)], limit=100)
    return [v.content for v in repo.read_many([("ConceptMap", i) for i in ids]) if v.content is not None]


def translate(req: FhirRequest, repo: Repository, resource_type: str | None, resource_id: str | None) -> FhirResponse:
    inp = OperationInput.of(req)
    codings = codings_input(inp)
    reverse = inp.boolean("reverse")
    target_system = inp.string("targetsystem")
    maps = _maps(repo, inp, resource_id, next((c["system"] for c in codings if c.get("system")), None), reverse)
    matches: list[dict[str, Any]] = []
    for cm in maps:
        for group in cm.get("group") or []:
            src, tgt = (group.get("target"), group.get("source")) if reverse else (group.get("source"),
                                                                                    group.get("target"))
            if target_system and tgt != target_system:
                continue
            for coding in codings:
                if coding.get("system") and src and coding["system"] != src:
                    continue
                matches += _group_matches(cm, group, coding["code"], tgt, reverse)
    result = any(m["equivalence"] not in _NO_MATCH for m in matches)
    out = [value("result", "Boolean", result)]
    if not result:
        out.append(value("message", "String", "No mapping found" if not matches else "Only unmatched mappings"))
    out += [_match(m) for m in matches]
    return parameters(*out)


def _group_matches(cm: dict[str, Any], group: dict[str, Any], code: str, tgt: str | None,
                   reverse: bool) -> list[dict[str, Any]]:
    out = []
    for element in group.get("element") or []:
        for target in element.get("target") or []:
            if reverse:
                if target.get("code") != code:
                    continue
                concept = {"system": tgt, "code": element.get("code"), "display": element.get("display")}
            else:
                if element.get("code") != code:
                    continue
                concept = {"system": tgt, "code": target.get("code"), "display": target.get("display")}
            out.append({"equivalence": target.get("equivalence", "equivalent"), "source": cm.get("url"),
                        "concept": {k: v for k, v in concept.items() if v}, "comment": target.get("comment")})
    if not out and not reverse and not any(e.get("code") == code for e in group.get("element") or []):
        unmapped = group.get("unmapped") or {}  # what the map says of codes it does not list
        fixed = unmapped.get("code") if unmapped.get("mode") == "fixed" else code
        if unmapped.get("mode") in ("fixed", "provided") and fixed:
            out.append({"equivalence": "inexact" if unmapped["mode"] == "fixed" else "equal", "source": cm.get("url"),
                        "concept": {"system": tgt, "code": fixed, "display": unmapped.get("display")}})
    return out


def _match(m: dict[str, Any]) -> dict[str, Any]:
    part = [{"name": "equivalence", "valueCode": m["equivalence"]},
            {"name": "concept", "valueCoding": {k: v for k, v in m["concept"].items() if v}}]
    if m.get("source"):
        part.append({"name": "source", "valueUri": m["source"]})
    return {"name": "match", "part": part}
