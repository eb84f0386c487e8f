"""Terminology operations through the live HTTP server, on SQLite and PostgreSQL (fixture: a shapes hierarchy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent.parent / "fixtures" / "terminology"
SHAPES = "http://example.org/fhir/CodeSystem/shapes"
POLYGONS = "http://example.org/fhir/ValueSet/polygons"
CMAP = "http://example.org/fhir/ConceptMap/shapes-to-simple"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def tx(api):  # type: ignore[no-untyped-def]
    for name in ("shapes.json", "shapes-polygons.json", "shapes-to-simple.json"):
        res = fixture(name)
        r = api.http.put(f"{res['resourceType']}/{res['id']}", json=res)
        assert r.status_code in (200, 201), r.text
    return api


def params(body: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    assert body["resourceType"] == "Parameters", body
    out: dict[str, list[dict[str, Any]]] = {}
    for p in body["parameter"]:
        out.setdefault(p["name"], []).append(p)
    return out


def props(body: dict[str, Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for p in params(body).get("property", []):
        code = p["part"][0]["valueCode"]
        val = next(v for k, v in p["part"][1].items() if k.startswith("value"))
        out.setdefault(code, []).append(val)
    return out


def post(api, path: str, *parameter: dict[str, Any]):  # type: ignore[no-untyped-def]
    return api.http.post(path, json={"resourceType": "Parameters", "parameter": list(parameter)})


def issue(r) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]


# --- $lookup -----------------------------------------------------------------------------------------------

def test_lookup_get_returns_display_designations_properties_parent_and_children(tx) -> None:  # type: ignore[no-untyped-def]
    r = tx.http.get("CodeSystem/$lookup", params={"system": SHAPES, "code": "quad"})
    assert r.status_code == 200, r.text
    p = params(r.json())
    assert p["name"][0]["valueString"] == "Shapes"
    assert p["version"][0]["valueString"] == "1.0.0"
    assert p["display"][0]["valueString"] == "Quadrilateral"
    pr = props(r.json())
    assert pr["sides"] == [4]
    assert pr["parent"] == ["polygon"]
    assert sorted(pr["child"]) == ["rectangle", "square"]
    square = tx.http.get("CodeSystem/$lookup", params={"system": SHAPES, "code": "square"}).json()
    designation = params(square)["designation"][0]["part"]
    assert {"name": "language", "valueCode": "de"} in designation
    assert {"name": "value", "valueString": "Quadrat"} in designation


def test_lookup_post_coding_and_instance_level_and_property_selection(tx) -> None:  # type: ignore[no-untyped-def]
    r = post(tx, "CodeSystem/$lookup", {"name": "coding", "valueCoding": {"system": SHAPES, "code": "shape"}},
             {"name": "property", "valueCode": "definition"})
    assert r.status_code == 200, r.text
    assert props(r.json()) == {"definition": ["Any shape"]}
    r = tx.http.get("CodeSystem/shapes/$lookup", params={"code": "circle"})
    assert params(r.json())["display"][0]["valueString"] == "Circle"
    assert props(r.json())["parent"] == ["round"]


def test_lookup_errors_name_the_parameter(tx) -> None:  # type: ignore[no-untyped-def]
    r = tx.http.get("CodeSystem/$lookup", params={"system": SHAPES, "code": "hexagon"})
    assert r.status_code == 404 and issue(r)["expression"] == ["code"]
    r = tx.http.get("CodeSystem/$lookup", params={"system": "http://nowhere.example/cs", "code": "x"})
    assert r.status_code == 404 and issue(r)["expression"] == ["system"]
    r = tx.http.get("CodeSystem/$lookup", params={"system": SHAPES})
    assert r.status_code == 400 and issue(r)["expression"] == ["code"]
    r = tx.http.get("CodeSystem/nope/$lookup", params={"code": "x"})
    assert r.status_code == 404
    r = tx.http.post("CodeSystem/$lookup", json={"resourceType": "Patient"})
    assert r.status_code == 400 and issue(r)["expression"] == ["Parameters"]
    assert tx.http.get("Patient/$lookup", params={"code": "x"}).status_code == 400


# --- CodeSystem $validate-code and $subsumes ---------------------------------------------------------------

def test_code_system_validate_code(tx) -> None:  # type: ignore[no-untyped-def]
    ok = tx.http.get("CodeSystem/$validate-code", params={"url": SHAPES, "code": "circle"}).json()
    assert params(ok)["result"][0]["valueBoolean"] is True
    assert params(ok)["display"][0]["valueString"] == "Circle"
    bad = tx.http.get("CodeSystem/$validate-code", params={"url": SHAPES, "code": "hexagon"}).json()
    assert params(bad)["result"][0]["valueBoolean"] is False
    assert "hexagon" in params(bad)["message"][0]["valueString"]
    wrong = post(tx, "CodeSystem/shapes/$validate-code",
                 {"name": "coding", "valueCoding": {"system": SHAPES, "code": "circle", "display": "Kreis"}}).json()
    assert params(wrong)["result"][0]["valueBoolean"] is False
    cc = post(tx, "CodeSystem/$validate-code", {"name": "url", "valueUri": SHAPES},
              {"name": "codeableConcept", "valueCodeableConcept": {"coding": [
                  {"system": SHAPES, "code": "nope"}, {"system": SHAPES, "code": "square", "display": "Quadrat"}]}})
    assert params(cc.json())["result"][0]["valueBoolean"] is True, cc.text


@pytest.mark.parametrize(("a", "b", "outcome"), [
    ("polygon", "square", "subsumes"), ("square", "shape", "subsumed-by"), ("quad", "quad", "equivalent"),
    ("round", "triangle", "not-subsumed"), ("line", "shape", "not-subsumed")])
def test_subsumes(tx, a: str, b: str, outcome: str) -> None:  # type: ignore[no-untyped-def]
    r = tx.http.get("CodeSystem/$subsumes", params={"system": SHAPES, "codeA": a, "codeB": b})
    assert r.status_code == 200, r.text
    assert params(r.json())["outcome"][0]["valueCode"] == outcome


def test_subsumes_post_codings_instance_level_and_unknown_code(tx) -> None:  # type: ignore[no-untyped-def]
    r = post(tx, "CodeSystem/shapes/$subsumes", {"name": "codingA", "valueCoding": {"code": "round"}},
             {"name": "codingB", "valueCoding": {"code": "ellipse"}})
    assert params(r.json())["outcome"][0]["valueCode"] == "subsumes"
    r = tx.http.get("CodeSystem/$subsumes", params={"system": SHAPES, "codeA": "shape", "codeB": "blob"})
    assert r.status_code == 404 and issue(r)["expression"] == ["codeB"]


def test_concept_tables_follow_updates_and_deletes(tx) -> None:  # type: ignore[no-untyped-def]
    cs = fixture("shapes.json")
    cs["concept"] = [c for c in cs["concept"] if c["code"] != "line"]
    cs["concept"][0]["concept"].append({"code": "star", "display": "Star"})
    assert tx.http.put("CodeSystem/shapes", json=cs).status_code == 200
    gone = tx.http.get("CodeSystem/$lookup", params={"system": SHAPES, "code": "line"})
    assert gone.status_code == 404
    star = tx.http.get("CodeSystem/$subsumes", params={"system": SHAPES, "codeA": "shape", "codeB": "star"})
    assert params(star.json())["outcome"][0]["valueCode"] == "subsumes"
    assert tx.http.delete("CodeSystem/shapes").status_code in (200, 204)
    r = tx.http.get("CodeSystem/$lookup", params={"system": SHAPES, "code": "star"})
    assert r.status_code == 404 and issue(r)["expression"] == ["system"]
