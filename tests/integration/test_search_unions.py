"""Parameters whose expression is the union of others' (Observation's ``combo-*``) store no rows of their own
and are searched through their parts' rows, with every modifier, on both databases over real HTTP; so do
composites on the resource itself (``code-value-quantity``: its components' criteria ANDed); and a
CodeableConcept's text equal to a coding's display shares that coding's row."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from fhir_server.search.tables import COMPOSITE, QUANTITY, TOKEN
from tests.conftest import LiveServer
from tests.integration.search_support import ids, post

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SCT = "http://snomed.info/sct"


def ordered(live: LiveServer, query: str) -> list[str]:
    resp = live.http.get(query)
    assert resp.status_code == 200, resp.text
    return [e["resource"]["id"] for e in resp.json().get("entry", [])]


def concept(code: str, display: str | None = None, text: str | None = None, system: str = LOINC) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding], **({"text": text} if text else {})}


def quantity(value: float, code: str = "mg/dL") -> dict[str, Any]:
    return {"value": value, "system": UCUM, "code": code, "unit": code}


@pytest.fixture(scope="module")
def data(live: LiveServer) -> dict[str, str]:
    live.backend.truncate()
    return {
        # the code on the resource itself, a quantity value
        "own": post(live, {"resourceType": "Observation", "status": "final",
                           "code": concept("2339-0", "Glucose", text="Glucose"), "valueQuantity": quantity(100)}),
        # the code only in a component, with the value there too
        "component": post(live, {"resourceType": "Observation", "status": "final",
                                 "code": concept("85354-9", "Blood pressure panel"),
                                 "component": [{"code": concept("8480-6", "Systolic"),
                                                "valueQuantity": quantity(130, "mm[Hg]")}]}),
        # a coded value in a component; the resource's code has text unlike its display
        "coded": post(live, {"resourceType": "Observation", "status": "final",
                             "code": concept("883-9", "ABO group", text="Blood group"),
                             "component": [{"code": concept("10331-7", "Rh"),
                                            "valueCodeableConcept": concept("165747007", system=SCT)}]}),
        # no code anyone searches for here, and no value: data absent
        "absent": post(live, {"resourceType": "Observation", "status": "final", "code": {"text": "Note"},
                              "dataAbsentReason": concept("unknown", system="http://terminology.hl7.org/"
                                                                            "CodeSystem/data-absent-reason")}),
    }


def test_a_union_has_no_rows_of_its_own(live: LiveServer, data: dict[str, str]) -> None:
    with live.backend.engine.connect() as conn:
        for table in (TOKEN, QUANTITY, COMPOSITE):
            stored = conn.execute(select(func.count()).select_from(table).where(
                table.c.param.like("combo-%"))).scalar_one()
            assert stored == 0, table.name
        params = {r[0] for r in conn.execute(select(COMPOSITE.c.param).distinct())}
        assert params == {"component-code-value-quantity", "component-code-value-concept"}  # no code-value-*
        parts = conn.execute(select(func.count()).select_from(TOKEN).where(
            TOKEN.c.param.in_(["code", "component-code"]))).scalar_one()
        assert parts > 0


def test_token_union_and_its_modifiers(live: LiveServer, data: dict[str, str]) -> None:
    q = "Observation?combo-code="
    assert ids(live, f"{q}{LOINC}|2339-0") == {data["own"]}
    assert ids(live, f"{q}{LOINC}|8480-6") == {data["component"]}
    assert ids(live, f"{q}8480-6,2339-0") == {data["own"], data["component"]}  # values ORed over both parts
    assert ids(live, f"{q}{LOINC}|") == {data["own"], data["component"], data["coded"]}
    # :not is the complement of the union: neither the resource's code nor a component's may match
    assert ids(live, f"Observation?combo-code:not={LOINC}|8480-6") == {data["own"], data["coded"], data["absent"]}
    assert ids(live, "Observation?combo-code:text=systol") == {data["component"]}
    assert ids(live, "Observation?combo-code:text=blood") == {data["component"], data["coded"]}
    assert ids(live, f"Observation?combo-code=8480-6&combo-code={LOINC}|85354-9") == {data["component"]}  # AND
    assert ids(live, f"Observation?combo-value-concept={SCT}|165747007") == {data["coded"]}
    assert ids(live, "Observation?combo-data-absent-reason=unknown") == {data["absent"]}


def test_missing_of_a_union_needs_every_part_missing(live: LiveServer, data: dict[str, str]) -> None:
    assert ids(live, "Observation?combo-value-quantity:missing=true") == {data["coded"], data["absent"]}
    assert ids(live, "Observation?combo-value-quantity:missing=false") == {data["own"], data["component"]}
    assert ids(live, "Observation?combo-value-concept:missing=false") == {data["coded"]}


def test_quantity_and_composite_unions(live: LiveServer, data: dict[str, str]) -> None:
    assert ids(live, "Observation?combo-value-quantity=gt99") == {data["own"], data["component"]}
    assert ids(live, "Observation?combo-value-quantity=gt120") == {data["component"]}
    assert ids(live, f"Observation?combo-value-quantity=100|{UCUM}|mg/dL") == {data["own"]}
    assert ids(live, "Observation?combo-value-quantity=1|http://unitsofmeasure.org|g/L") == {data["own"]}  # UCUM
    q = "Observation?combo-code-value-quantity="
    assert ids(live, f"{q}{LOINC}|8480-6$gt120") == {data["component"]}
    assert ids(live, f"{q}{LOINC}|2339-0$gt120") == set()  # the value must be on the same element
    assert ids(live, f"Observation?combo-code-value-concept={LOINC}|10331-7${SCT}|165747007") == {data["coded"]}


def test_a_composite_on_the_resource_is_its_components_anded(live: LiveServer, data: dict[str, str]) -> None:
    two_codes = post(live, {"resourceType": "Observation", "status": "final",
                            "code": {"coding": [{"system": LOINC, "code": "2345-7"},
                                                {"system": "urn:lab", "code": "GLU"}]},
                            "valueQuantity": quantity(5.5, "mmol/L")})
    assert ids(live, "Observation?code-value-quantity=urn:lab|GLU$gt5") == {two_codes}  # either coding
    assert ids(live, f"Observation?code-value-quantity={LOINC}|2345-7$lt5") == set()
    assert ids(live, f"Observation?code-value-quantity={LOINC}|2345-7$lt5,urn:lab|GLU$ge5.5") == {two_codes}
    assert ids(live, f"Observation?code-value-quantity={LOINC}|2339-0$1|{UCUM}|g/L") == {data["own"]}  # UCUM
    # the value must be the resource's own: a component's value does not count here
    assert ids(live, f"Observation?code-value-quantity={LOINC}|85354-9$gt100") == set()
    assert ids(live, f"Observation?code-value-concept={LOINC}|883-9${SCT}|165747007") == set()
    text = post(live, {"resourceType": "Observation", "status": "final", "code": concept("5778-6"),
                       "valueCodeableConcept": {"text": "Yellow"}})
    # code-value-string stays a stored composite: value-string would also match a CodeableConcept's text
    assert text in ids(live, "Observation?code=5778-6&value-string=yel")
    assert ids(live, f"Observation?code-value-string={LOINC}|5778-6$yel") == set()
    for rid in (two_codes, text):
        assert live.http.delete(f"Observation/{rid}").status_code in (200, 204)


def test_sorting_and_chaining_by_a_union(live: LiveServer, data: dict[str, str]) -> None:
    # lowest code of the resource or its components: 10331-7 (coded) < 2339-0 (own) < 8480-6 (component);
    # "absent" has a code text only (present, no code): last
    got = ordered(live, "Observation?combo-code:missing=false&_sort=combo-code")
    assert got == [data["coded"], data["own"], data["component"], data["absent"]]
    # descending by the highest: 883-9 (coded) > 85354-9 (component) > 2339-0 (own)
    assert ordered(live, "Observation?combo-code:missing=false&_sort=-combo-code")[:3] == [
        data["coded"], data["component"], data["own"]]
    pid = post(live, {"resourceType": "Patient", "name": [{"family": "Union"}]})
    obs = post(live, {"resourceType": "Observation", "status": "final", "code": concept("718-7"),
                      "subject": {"reference": f"Patient/{pid}"}})
    assert ids(live, f"Patient?_has:Observation:subject:combo-code={LOINC}|718-7") == {pid}
    assert ids(live, "Observation?subject:Patient.name=Union&combo-code=718-7") == {obs}


def test_text_equal_to_a_display_shares_the_coding_row(live: LiveServer, data: dict[str, str]) -> None:
    with live.backend.engine.connect() as conn:
        def rows(rid: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(select(TOKEN.c.code, TOKEN.c.text_norm).where(
                TOKEN.c.resource_id == rid, TOKEN.c.param == "code"))]
        assert rows(data["own"]) == [("2339-0", "glucose")]  # text "Glucose" = display: no row of its own
        assert sorted(rows(data["coded"]), key=str) == sorted([("883-9", "abo group"), (None, "blood group")],
                                                              key=str)
    assert ids(live, "Observation?code:text=glucose") == {data["own"]}
    assert ids(live, "Observation?code:text=blood gr") == {data["coded"]}
    assert ids(live, "Observation?code:text=abo") == {data["coded"]}
