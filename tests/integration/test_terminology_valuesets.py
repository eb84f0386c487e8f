"""ValueSet $expand / $validate-code and ConceptMap $translate through the live server, on both databases."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_terminology_operations import CMAP, POLYGONS, SHAPES, issue, params, post, tx

__all__ = ["tx"]  # the fixture, shared with the operations tests


def codes(vs: dict[str, Any]) -> list[str]:
    assert vs["resourceType"] == "ValueSet", vs
    return [c["code"] for c in vs["expansion"].get("contains", [])]


def inline(*include: dict[str, Any], exclude: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    compose: dict[str, Any] = {"include": list(include)}
    if exclude:
        compose["exclude"] = exclude
    return {"resourceType": "Parameters", "parameter": [{"name": "valueSet", "resource": {
        "resourceType": "ValueSet", "status": "active", "compose": compose}}]}


def expand_inline(api, *include: dict[str, Any], exclude: list[dict[str, Any]] | None = None) -> list[str]:  # type: ignore[no-untyped-def]
    r = api.http.post("ValueSet/$expand", json=inline(*include, exclude=exclude))
    assert r.status_code == 200, r.text
    return codes(r.json())


def test_expand_by_url_is_a_filter_minus_exclude(tx) -> None:  # type: ignore[no-untyped-def]
    r = tx.http.get("ValueSet/$expand", params={"url": POLYGONS})
    assert r.status_code == 200, r.text
    vs = r.json()
    assert codes(vs) == ["polygon", "triangle", "quad", "square"]
    assert vs["expansion"]["total"] == 4 and vs["url"] == POLYGONS and "compose" not in vs
    assert vs["expansion"]["contains"][0] == {"system": SHAPES, "version": "1.0.0", "code": "polygon",
                                              "display": "Polygon"}
    assert vs["expansion"]["identifier"].startswith("urn:uuid:") and vs["expansion"]["timestamp"]
    assert codes(tx.http.get("ValueSet/polygons/$expand").json()) == codes(vs)
    versioned = tx.http.get("ValueSet/$expand", params={"url": POLYGONS, "valueSetVersion": "1"})
    assert versioned.status_code == 200
    missing = tx.http.get("ValueSet/$expand", params={"url": POLYGONS, "valueSetVersion": "2"})
    assert missing.status_code == 404 and issue(missing)["expression"] == ["url"]


def test_expand_text_filter_and_paging(tx) -> None:  # type: ignore[no-untyped-def]
    vs = tx.http.get("ValueSet/$expand", params={"url": POLYGONS, "filter": "squ"}).json()
    assert codes(vs) == ["square"] and vs["expansion"]["total"] == 1
    assert {"name": "filter", "valueString": "squ"} in vs["expansion"]["parameter"]
    for text, expected in (("%", []), ("_", []), ("QUADRI", ["quad"]), ("tri", ["triangle"]), ("pol", ["polygon"])):
        found = tx.http.get("ValueSet/$expand", params={"url": POLYGONS, "filter": text}).json()
        assert codes(found) == expected, text
    page = tx.http.get("ValueSet/$expand", params={"url": POLYGONS, "count": "2", "offset": "1"}).json()
    assert codes(page) == ["triangle", "quad"]
    assert page["expansion"]["total"] == 4 and page["expansion"]["offset"] == 1
    bad = tx.http.get("ValueSet/$expand", params={"url": POLYGONS, "count": "-1"})
    assert bad.status_code == 400 and issue(bad)["expression"] == ["count"]


@pytest.mark.parametrize(("flt", "expected"), [
    ({"property": "concept", "op": "descendent-of", "value": "round"}, ["circle", "ellipse"]),
    ({"property": "concept", "op": "is-not-a", "value": "shape"}, ["line"]),
    ({"property": "concept", "op": "is-a", "value": "round"}, ["round", "circle", "ellipse"]),
    ({"property": "code", "op": "regex", "value": "[a-c].*"}, ["circle"]),
    ({"property": "concept", "op": "in", "value": "line,circle,nothing"}, ["circle", "line"]),
    ({"property": "concept", "op": "=", "value": "quad"}, ["quad"]),
    ({"property": "sides", "op": "=", "value": "4"}, ["quad", "square", "rectangle"]),
    ({"property": "status", "op": "=", "value": "retired"}, ["ellipse"]),
    ({"property": "display", "op": "regex", "value": ".*angle"}, ["triangle", "rectangle"]),
])
def test_expand_filters(tx, flt: dict[str, Any], expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert expand_inline(tx, {"system": SHAPES, "filter": [flt]}) == expected


def test_expand_concept_lists_nested_value_sets_and_combined_filters(tx) -> None:  # type: ignore[no-untyped-def]
    listed = expand_inline(tx, {"system": SHAPES, "concept": [{"code": "line", "display": "A line"},
                                                              {"code": "circle"}, {"code": "bogus"}]})
    assert listed == ["line", "circle"]
    both = expand_inline(tx, {"system": SHAPES, "filter": [
        {"property": "concept", "op": "is-a", "value": "polygon"}, {"property": "sides", "op": "=", "value": "4"}]})
    assert both == ["quad", "square", "rectangle"]
    nested = expand_inline(tx, {"valueSet": [POLYGONS]}, {"system": SHAPES, "concept": [{"code": "line"}]},
                           exclude=[{"system": SHAPES, "filter": [{"property": "concept", "op": "is-a",
                                                                   "value": "quad"}]}])
    assert nested == ["polygon", "triangle", "line"]
    intersect = expand_inline(tx, {"system": SHAPES, "valueSet": [POLYGONS],
                                   "filter": [{"property": "sides", "op": "=", "value": "4"}]})
    assert intersect == ["quad", "square"]


def test_expand_errors(tx) -> None:  # type: ignore[no-untyped-def]
    r = tx.http.post("ValueSet/$expand", json=inline({"system": "http://unknown.example/cs"}))
    assert r.status_code == 422 and issue(r)["expression"] == ["ValueSet.compose.include[0].system"]
    r = tx.http.post("ValueSet/$expand", json=inline(
        {"system": SHAPES, "filter": [{"property": "concept", "op": "regex", "value": "("}]}))
    assert r.status_code == 400 and issue(r)["expression"] == ["ValueSet.compose.include[0].filter[0]"]
    r = tx.http.get("ValueSet/$expand")
    assert r.status_code == 400 and issue(r)["expression"] == ["url"]
    r = tx.http.post("ValueSet/$expand", json=inline({"valueSet": ["http://unknown.example/vs"]}))
    assert r.status_code == 404 and issue(r)["expression"] == ["ValueSet.compose.include[0].valueSet[0]"]


def test_value_set_validate_code(tx) -> None:  # type: ignore[no-untyped-def]
    def check(**query: str) -> dict[str, list[dict[str, Any]]]:
        r = tx.http.get("ValueSet/$validate-code", params=query)
        assert r.status_code == 200, r.text
        return params(r.json())

    ok = check(url=POLYGONS, system=SHAPES, code="square")
    assert ok["result"][0]["valueBoolean"] is True and ok["display"][0]["valueString"] == "Square"
    excluded = check(url=POLYGONS, system=SHAPES, code="rectangle")
    assert excluded["result"][0]["valueBoolean"] is False and "rectangle" in excluded["message"][0]["valueString"]
    assert check(url=POLYGONS, system="http://other.example", code="square")["result"][0]["valueBoolean"] is False
    assert check(url=POLYGONS, system=SHAPES, code="square", display="Box")["result"][0]["valueBoolean"] is False
    r = tx.http.get("ValueSet/polygons/$validate-code", params={"coding": f"{SHAPES}|triangle"})
    assert params(r.json())["result"][0]["valueBoolean"] is True
    r = post(tx, "ValueSet/polygons/$validate-code", {"name": "codeableConcept", "valueCodeableConcept": {
        "coding": [{"system": SHAPES, "code": "circle"}, {"system": SHAPES, "code": "quad"}]}})
    assert params(r.json())["result"][0]["valueBoolean"] is True
    r = tx.http.get("ValueSet/polygons/$validate-code")
    assert r.status_code == 400 and issue(r)["expression"] == ["code"]


def test_translate(tx) -> None:  # type: ignore[no-untyped-def]
    r = tx.http.get("ConceptMap/$translate", params={"url": CMAP, "system": SHAPES, "code": "square"})
    assert r.status_code == 200, r.text
    p = params(r.json())
    assert p["result"][0]["valueBoolean"] is True
    match = p["match"][0]["part"]
    assert {"name": "equivalence", "valueCode": "equivalent"} in match
    assert {"name": "concept", "valueCoding": {"system": "http://example.org/fhir/CodeSystem/simple",
                                               "code": "box", "display": "Box"}} in match
    assert {"name": "source", "valueUri": CMAP} in match
    unmatched = params(tx.http.get("ConceptMap/shapes-to-simple/$translate",
                                   params={"system": SHAPES, "code": "circle"}).json())
    assert unmatched["result"][0]["valueBoolean"] is False
    reverse = post(tx, "ConceptMap/$translate", {"name": "coding", "valueCoding": {
        "system": "http://example.org/fhir/CodeSystem/simple", "code": "box"}},
        {"name": "reverse", "valueBoolean": True}, {"name": "url", "valueUri": CMAP})
    found = sorted(m["part"][1]["valueCoding"]["code"] for m in params(reverse.json())["match"])
    assert found == ["rectangle", "square"]
    by_system = params(tx.http.get("ConceptMap/$translate", params={"system": SHAPES, "code": "rectangle"}).json())
    assert by_system["result"][0]["valueBoolean"] is True
    other_target = params(tx.http.get("ConceptMap/$translate", params={
        "url": CMAP, "system": SHAPES, "code": "square", "targetsystem": "http://x.example"}).json())
    assert other_target["result"][0]["valueBoolean"] is False


def test_ucum_codes_validate_through_the_grammar(tx) -> None:  # type: ignore[no-untyped-def]
    ucum = "http://unitsofmeasure.org"
    ok = params(tx.http.get("CodeSystem/$validate-code", params={"url": ucum, "code": "mg/dL"}).json())
    assert ok["result"][0]["valueBoolean"] is True
    bad = params(tx.http.get("CodeSystem/$validate-code", params={"url": ucum, "code": "mg//dL"}).json())
    assert bad["result"][0]["valueBoolean"] is False
    units = {"resourceType": "ValueSet", "status": "active", "compose": {"include": [{"system": ucum}]}}

    def in_units(code: str) -> bool:
        r = post(tx, "ValueSet/$validate-code", {"name": "valueSet", "resource": units},
                 {"name": "coding", "valueCoding": {"system": ucum, "code": code}})
        return bool(params(r.json())["result"][0]["valueBoolean"])

    assert in_units("mm[Hg]") and not in_units("xyz")
    r = tx.http.post("ValueSet/$expand", json={"resourceType": "Parameters",
                                               "parameter": [{"name": "valueSet", "resource": units}]})
    assert r.status_code == 422 and issue(r)["code"] == "too-costly"
