"""Quantity search in UCUM canonical units (both databases, real HTTP): 5.4 mg finds a stored 5400 ug."""

from __future__ import annotations

import pytest

from tests.conftest import LiveServer
from tests.integration.search_support import ids, post

UCUM = "http://unitsofmeasure.org"


@pytest.fixture(scope="module")
def data(live: LiveServer) -> dict[str, str]:
    live.backend.truncate()

    def obs(value: float, code: str, system: str = UCUM) -> str:
        return post(live, {"resourceType": "Observation", "status": "final", "code": {"text": "dose"},
                           "valueQuantity": {"value": value, "unit": code, "system": system, "code": code}})

    return {"ug5400": obs(5400, "ug"), "mg5.4": obs(5.4, "mg"), "mg6": obs(6, "mg"),
            "other5.4": obs(5.4, "mg", "http://example.org/units"), "cel": obs(38.5, "Cel"),
            "mgdl100": obs(100, "mg/dL"), "gl1": obs(1, "g/L"), "gl2": obs(2, "g/L")}


def test_ucum_values_match_across_units(live: LiveServer, data: dict[str, str]) -> None:
    q = "Observation?value-quantity="
    assert ids(live, f"{q}5.4|{UCUM}|mg") == {data["ug5400"], data["mg5.4"]}
    assert ids(live, f"{q}0.0054|{UCUM}|g") == {data["ug5400"], data["mg5.4"]}
    assert ids(live, f"{q}5400|{UCUM}|ug") == {data["ug5400"], data["mg5.4"]}
    assert ids(live, f"{q}gt5.5|{UCUM}|mg") == {data["mg6"]}
    assert ids(live, f"{q}lt6000|{UCUM}|ug") == {data["ug5400"], data["mg5.4"]}
    assert ids(live, f"{q}ge5400|{UCUM}|ug") == {data["ug5400"], data["mg5.4"], data["mg6"]}
    assert ids(live, f"{q}1|{UCUM}|g/L") == {data["mgdl100"], data["gl1"]}  # 100 mg/dL is 1 g/L
    assert ids(live, f"{q}gt150|{UCUM}|mg/dL") == {data["gl2"]}
    # another dimension never matches: 5.4 mg is not 5.4 mL
    assert ids(live, f"{q}5.4|{UCUM}|mL") == set()


def test_other_systems_and_unconvertible_units_match_by_code(live: LiveServer, data: dict[str, str]) -> None:
    q = "Observation?value-quantity="
    assert ids(live, f"{q}5.4|http://example.org/units|mg") == {data["other5.4"]}
    assert ids(live, f"{q}5.4||mg") == {data["mg5.4"], data["other5.4"]}  # code or unit, no conversion
    assert ids(live, f"{q}38.5|{UCUM}|Cel") == {data["cel"]}  # offset unit: compared as stored
    assert data["ug5400"] in ids(live, f"{q}5400")  # a bare number: any unit, as stored


def test_canonical_rows_follow_updates(live: LiveServer, data: dict[str, str]) -> None:
    rid = post(live, {"resourceType": "Observation", "status": "final", "code": {"text": "dose"},
                      "valueQuantity": {"value": 7, "system": UCUM, "code": "mg"}})
    assert rid in ids(live, f"Observation?value-quantity=0.007|{UCUM}|g")
    resp = live.http.put(f"Observation/{rid}", json={"resourceType": "Observation", "id": rid, "status": "final",
                                                     "code": {"text": "dose"},
                                                     "valueQuantity": {"value": 8, "system": UCUM, "code": "mg"}})
    assert resp.status_code == 200, resp.text
    assert rid not in ids(live, f"Observation?value-quantity=0.007|{UCUM}|g")
    assert rid in ids(live, f"Observation?value-quantity=8000|{UCUM}|ug")
