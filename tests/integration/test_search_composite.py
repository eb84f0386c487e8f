"""Composite parameters match per element (both databases, real HTTP): a blood pressure whose systolic is 90
and diastolic 120 is not a match for systolic > 100."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.integration.search_support import ids, post

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SYS, DIA = "8480-6", "8462-4"


def bp(systolic: float, diastolic: float) -> dict[str, Any]:
    def component(code: str, value: float) -> dict[str, Any]:
        return {"code": {"coding": [{"system": LOINC, "code": code}]},
                "valueQuantity": {"value": value, "system": UCUM, "code": "mm[Hg]", "unit": "mmHg"}}

    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
            "component": [component(SYS, systolic), component(DIA, diastolic)]}


@pytest.fixture(scope="module")
def data(live: LiveServer) -> dict[str, str]:
    live.backend.truncate()
    return {
        "low_sys": post(live, bp(90, 120)),  # odd, but it makes the point: 120 is the diastolic
        "high_sys": post(live, bp(130, 80)),
        "glucose": post(live, {"resourceType": "Observation", "status": "final",
                               "code": {"coding": [{"system": LOINC, "code": "2339-0"}]},
                               "valueQuantity": {"value": 100, "system": UCUM, "code": "mg/dL"}}),
        "concept": post(live, {"resourceType": "Observation", "status": "final",
                               "code": {"coding": [{"system": LOINC, "code": "883-9"}]},
                               "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct",
                                                                    "code": "112144000"}]}}),
        "text": post(live, {"resourceType": "Observation", "status": "final",
                            "code": {"coding": [{"system": LOINC, "code": "5778-6"}]}, "valueString": "Yellow"}),
    }


def test_components_match_on_the_same_element(live: LiveServer, data: dict[str, str]) -> None:
    q = "Observation?component-code-value-quantity="
    assert ids(live, f"{q}{LOINC}|{SYS}$gt100") == {data["high_sys"]}
    assert ids(live, f"{q}{LOINC}|{DIA}$gt100") == {data["low_sys"]}
    assert ids(live, f"{q}{SYS}$lt100") == {data["low_sys"]}  # code without system
    assert ids(live, f"{q}{LOINC}|{SYS}$lt100,{LOINC}|{DIA}$lt100") == {data["low_sys"], data["high_sys"]}  # OR
    assert ids(live, f"{q}{LOINC}|{SYS}$gt100&{q[12:]}{LOINC}|{DIA}$lt100") == {data["high_sys"]}  # AND
    assert ids(live, f"{q}{LOINC}|{SYS}$gt100|{UCUM}|mm[Hg]") == {data["high_sys"]}
    # combo: the resource's own code/value and each component's
    assert ids(live, f"Observation?combo-code-value-quantity={LOINC}|{SYS}$gt100") == {data["high_sys"]}
    assert ids(live, f"Observation?combo-code-value-quantity={LOINC}|2339-0$gt99") == {data["glucose"]}


def test_value_types_and_units(live: LiveServer, data: dict[str, str]) -> None:
    assert ids(live, f"Observation?code-value-quantity={LOINC}|2339-0$ge1|{UCUM}|g/L") == {data["glucose"]}
    assert ids(live, f"Observation?code-value-quantity={LOINC}|2339-0$gt2|{UCUM}|g/L") == set()
    assert ids(live, f"Observation?code-value-quantity={LOINC}|{SYS}$gt1") == set()  # 8480-6 is a component
    assert ids(live, f"Observation?code-value-concept={LOINC}|883-9$http://snomed.info/sct|112144000") == {
        data["concept"]}
    assert ids(live, f"Observation?code-value-concept={LOINC}|883-9$http://snomed.info/sct|1") == set()
    assert ids(live, f"Observation?code-value-string={LOINC}|5778-6$yel") == {data["text"]}
    resp = live.http.get(f"Observation?component-code-value-quantity={LOINC}|{SYS}")
    assert resp.status_code == 400  # both components are needed
    assert resp.json()["issue"][0]["expression"] == ["component-code-value-quantity"]


def test_rows_follow_updates_and_deletes(live: LiveServer, data: dict[str, str]) -> None:
    rid = post(live, bp(95, 60))
    q = f"Observation?component-code-value-quantity={LOINC}|{SYS}$gt100"
    assert rid not in ids(live, q)
    resp = live.http.put(f"Observation/{rid}", json={**bp(150, 60), "id": rid})
    assert resp.status_code == 200, resp.text
    assert rid in ids(live, q)
    assert live.http.delete(f"Observation/{rid}").status_code in (200, 204)
    assert rid not in ids(live, q)


def test_sorting_by_a_composite_is_refused(live: LiveServer, data: dict[str, str]) -> None:
    resp = live.http.get("Observation?_sort=component-code-value-quantity")
    assert resp.status_code == 400 and resp.json()["issue"][0]["expression"] == ["_sort"]
