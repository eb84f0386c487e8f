"""Token search with terminology (both databases, real HTTP): the system a plain ``code`` element implies,
``|code``, and ``:in`` / ``:not-in`` / ``:above`` / ``:below`` through ValueSets and the is-a closure."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.search import terms
from tests.conftest import LiveServer
from tests.integration.search_support import ids, post

CS = "http://example.org/fhir/CodeSystem/body"
GENDER = "http://hl7.org/fhir/administrative-gender"


def obs(live: LiveServer, code: dict[str, Any], status: str = "final", **extra: Any) -> str:
    return post(live, {"resourceType": "Observation", "status": status, "code": code, **extra})


@pytest.fixture(scope="module")
def data(live: LiveServer) -> dict[str, str]:
    live.backend.truncate()
    # limb > arm > forearm; limb > leg; head (apart)
    post(live, {"resourceType": "CodeSystem", "url": CS, "status": "active", "content": "complete",
                "concept": [{"code": "limb", "concept": [{"code": "arm", "concept": [{"code": "forearm"}]},
                                                         {"code": "leg"}]},
                            {"code": "head"}]})
    post(live, {"resourceType": "ValueSet", "url": "http://example.org/fhir/ValueSet/arms", "status": "active",
                "compose": {"include": [{"system": CS, "filter": [{"property": "concept", "op": "is-a",
                                                                   "value": "arm"}]}]}})
    post(live, {"resourceType": "ValueSet", "url": "http://example.org/fhir/ValueSet/done", "status": "active",
                "compose": {"include": [{"system": "http://hl7.org/fhir/observation-status",
                                         "concept": [{"code": "final"}, {"code": "amended"}]}]}})
    post(live, {"resourceType": "ValueSet", "url": "http://example.org/fhir/ValueSet/women", "status": "active",
                "compose": {"include": [{"system": GENDER, "concept": [{"code": "female"}]}]}})
    post(live, {"resourceType": "ValueSet", "url": "http://example.org/fhir/ValueSet/empty", "status": "active",
                "expansion": {"timestamp": "2024-01-01", "total": 0}})
    ann = post(live, {"resourceType": "Patient", "gender": "female"})
    bob = post(live, {"resourceType": "Patient", "gender": "male"})

    def coded(code: str) -> dict[str, Any]:
        return {"coding": [{"system": CS, "code": code}]}

    return {
        "ann": ann, "bob": bob,
        "limb": obs(live, coded("limb"), subject={"reference": f"Patient/{ann}"}),
        "arm": obs(live, coded("arm"), status="amended", subject={"reference": f"Patient/{bob}"}),
        "forearm": obs(live, coded("forearm"), status="preliminary"),
        "leg": obs(live, coded("leg")),
        "head": obs(live, coded("head")),
        "bare": obs(live, {"coding": [{"code": "arm"}]}),  # no system: only |arm finds it
        "enc": post(live, {"resourceType": "Encounter", "status": "finished",
                           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}}),
    }


def test_plain_code_elements_carry_their_bound_system(live: LiveServer, data: dict[str, str]) -> None:
    assert ids(live, f"Patient?gender={GENDER}|male") == {data["bob"]}
    assert ids(live, "Patient?gender=male") == {data["bob"]}
    assert ids(live, f"Patient?gender={GENDER}|") == {data["ann"], data["bob"]}
    assert ids(live, "Patient?gender=http://example.org/other|male") == set()
    assert ids(live, "Patient?gender=|male") == set()  # the code has a system: the one its binding implies
    assert ids(live, "Observation?status=http://hl7.org/fhir/observation-status|amended") == {data["arm"]}
    assert ids(live, f"Patient?gender:not={GENDER}|male") == {data["ann"]}


def test_bar_code_means_no_system(live: LiveServer, data: dict[str, str]) -> None:
    assert ids(live, "Observation?code=|arm") == {data["bare"]}
    assert ids(live, "Observation?code=arm") == {data["bare"], data["arm"]}
    assert ids(live, f"Observation?code={CS}|arm") == {data["arm"]}


def test_in_and_not_in(live: LiveServer, data: dict[str, str]) -> None:
    arms = "http://example.org/fhir/ValueSet/arms"
    assert ids(live, f"Observation?code:in={arms}") == {data["arm"], data["forearm"]}
    assert ids(live, f"Observation?code:not-in={arms}") == {data["limb"], data["leg"], data["head"], data["bare"]}
    # plain code elements (status) and their implied system; ORed values; AND with another parameter
    assert ids(live, "Observation?status:in=http://example.org/fhir/ValueSet/done") == {
        data["limb"], data["arm"], data["leg"], data["head"], data["bare"]}
    assert ids(live, f"Observation?status:in=http://example.org/fhir/ValueSet/done&code:in={arms}") == {data["arm"]}
    assert ids(live, "Patient?gender:in=http://example.org/fhir/ValueSet/women") == {data["ann"]}
    assert ids(live, "Observation?code:in=http://example.org/fhir/ValueSet/empty") == set()
    # inside a chain and a _has
    assert ids(live, "Observation?subject:Patient.gender:in=http://example.org/fhir/ValueSet/women") == {data["limb"]}
    assert ids(live, f"Patient?_has:Observation:subject:code:in={arms}") == {data["bob"]}


def test_below_and_above_through_the_closure(live: LiveServer, data: dict[str, str]) -> None:
    assert ids(live, f"Observation?code:below={CS}|arm") == {data["arm"], data["forearm"]}
    assert ids(live, f"Observation?code:below={CS}|limb") == {data["limb"], data["arm"], data["forearm"], data["leg"]}
    assert ids(live, "Observation?code:below=arm") == {data["arm"], data["forearm"]}  # any system holding arm
    assert ids(live, f"Observation?code:above={CS}|forearm") == {data["limb"], data["arm"], data["forearm"]}
    assert ids(live, f"Observation?code:below={CS}|head,{CS}|leg") == {data["head"], data["leg"]}
    assert ids(live, "Encounter?class:below=http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB") == {data["enc"]}


def test_unknown_value_set_and_bounds(live: LiveServer, data: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    resp = live.http.get("Observation?code:in=http://example.org/fhir/ValueSet/nope")
    assert resp.status_code == 400
    assert resp.json()["issue"][0]["expression"] == ["code:in"]
    assert "nope" in resp.json()["issue"][0]["diagnostics"]
    resp = live.http.get("Observation?code:below=")
    assert resp.status_code == 400 and resp.json()["issue"][0]["expression"] == ["code:below"]
    monkeypatch.setattr(terms, "MAX_CODES", 1)  # the server runs in this process
    resp = live.http.get("Observation?code:in=http://example.org/fhir/ValueSet/arms")
    assert resp.status_code == 422 and resp.json()["issue"][0]["code"] == "too-costly"
    assert resp.json()["issue"][0]["expression"] == ["code:in"]
    # a large subsumption is not refused but joined on the closure in SQL: same answers as listed
    assert ids(live, f"Observation?code:below={CS}|limb") == {data["limb"], data["arm"], data["forearm"], data["leg"]}
    assert ids(live, "Observation?code:below=arm") == {data["arm"], data["forearm"]}
    assert ids(live, f"Observation?code:above={CS}|forearm") == {data["limb"], data["arm"], data["forearm"]}
    assert ids(live, f"Patient?_has:Observation:subject:code:below={CS}|limb") == {data["ann"], data["bob"]}
