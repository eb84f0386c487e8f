"""Search by every parameter type and modifier, through the HTTP server, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from tests.conftest import TENANT_BACKENDS, LiveServer
from tests.integration.search_support import post

# Also in a non-default tenant: its own schema, through /fhir/{tenant} (issue 13).
pytestmark = pytest.mark.parametrize("backend", TENANT_BACKENDS, indirect=True)


def ids(api: LiveServer, query: str, **headers: str) -> set[str]:
    resp = api.http.get(query, headers=headers)
    assert resp.status_code == 200, resp.text
    return {e["resource"]["id"] for e in resp.json().get("entry", []) if e["search"]["mode"] == "match"}


@pytest.fixture
def people(api: LiveServer) -> dict[str, str]:
    return {
        "chloe": post(api, {"resourceType": "Patient", "name": [{"family": "Dupré", "given": ["Chloé"]}],
                            "gender": "female", "birthDate": "1980-05-17", "active": True,
                            "identifier": [{"system": "urn:mrn", "value": "100", "type": {"coding": [
                                {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
                            "telecom": [{"system": "email", "value": "chloe@example.org"}],
                            "address": [{"city": "Saint-Étienne", "country": "FR"}]}),
        "bob": post(api, {"resourceType": "Patient", "name": [{"family": "Dupont", "given": ["Bob"]}],
                          "gender": "male", "birthDate": "1975", "identifier": [{"value": "200"}]}),
        "ann": post(api, {"resourceType": "Patient", "name": [{"family": "Smith", "given": ["Ann"]}],
                          "gender": "female", "birthDate": "2001-01-01"}),
    }


def test_string(api: LiveServer, people: dict[str, str]) -> None:
    assert ids(api, "Patient?name=dup") == {people["chloe"], people["bob"]}
    assert ids(api, "Patient?name=CHLOE") == {people["chloe"]}  # case and accents ignored
    assert ids(api, "Patient?family:exact=Dupré") == {people["chloe"]}
    assert ids(api, "Patient?family:exact=dupré") == set()
    assert ids(api, "Patient?name:contains=pon") == {people["bob"]}
    assert ids(api, "Patient?address-city=saint-etienne") == {people["chloe"]}
    assert ids(api, "Patient?name=smith,bob") == {people["ann"], people["bob"]}  # comma = OR
    assert ids(api, "Patient?name=dup&name=bob") == {people["bob"]}  # repeated = AND
    assert ids(api, "Patient?address:missing=true") == {people["bob"], people["ann"]}


def test_token(api: LiveServer, people: dict[str, str]) -> None:
    assert ids(api, "Patient?gender=female") == {people["chloe"], people["ann"]}
    assert ids(api, "Patient?gender:not=female") == {people["bob"]}
    assert ids(api, "Patient?identifier=urn:mrn|100") == {people["chloe"]}
    assert ids(api, "Patient?identifier=urn:mrn|") == {people["chloe"]}
    assert ids(api, "Patient?identifier=|200") == {people["bob"]}
    assert ids(api, "Patient?identifier=100") == {people["chloe"]}
    assert ids(api, "Patient?identifier=other|100") == set()
    assert ids(api, "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|100") == {
        people["chloe"]}
    assert ids(api, "Patient?active=true") == {people["chloe"]}
    assert ids(api, "Patient?email=chloe@example.org") == {people["chloe"]}
    assert ids(api, f"Patient?_id={people['bob']},{people['ann']}") == {people["bob"], people["ann"]}
    obs = post(api, {"resourceType": "Observation", "status": "final", "code": {
        "coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose [Mass/volume] in Blood"}],
        "text": "Blood sugar"}})
    assert ids(api, "Observation?code:text=glucose") == {obs}
    assert ids(api, "Observation?code:text=BLOOD sug") == {obs}
    resp = api.http.get("Observation?code:in=http://example.org/vs")
    assert resp.status_code == 400 and resp.json()["issue"][0]["expression"] == ["code:in"]


def test_date(api: LiveServer, people: dict[str, str]) -> None:
    chloe, bob, ann = people["chloe"], people["bob"], people["ann"]
    assert ids(api, "Patient?birthdate=1980-05-17") == {chloe}
    assert ids(api, "Patient?birthdate=1980") == {chloe}
    assert ids(api, "Patient?birthdate=1975-06") == set()  # 1975 is not within June 1975
    assert ids(api, "Patient?birthdate=ge1980") == {chloe, ann}
    assert ids(api, "Patient?birthdate=lt1980") == {bob}
    assert ids(api, "Patient?birthdate=gt1975-06-01") == {bob, chloe, ann}  # 1975 extends past June
    assert ids(api, "Patient?birthdate=sa1975-06-01") == {chloe, ann}
    assert ids(api, "Patient?birthdate=eb1980") == {bob}
    assert ids(api, "Patient?birthdate=ne1980") == {bob, ann}
    obs = post(api, {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
                     "effectiveDateTime": "2001-01-01T10:00:00+05:00"})
    assert ids(api, "Observation?date=2001-01-01T05:00:00Z") == {obs}  # the same instant in UTC
    assert ids(api, "Observation?date=2001-01-01T05:00:00%2B01:00") == set()
    assert ids(api, f"Patient?birthdate=2001-01-01&_id={ann}") == {ann}
    assert ids(api, "Patient?birthdate=ap2000-12-25") == {ann}  # within 10% of the distance from now
    assert ids(api, "Patient?birthdate=le1975-12-31&birthdate=ge1975-01-01") == {bob}
    enc = post(api, {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                     "period": {"start": "2020-01-01T10:00:00Z"}})  # open-ended
    assert ids(api, "Encounter?date=gt2030-01-01") == {enc}
    assert ids(api, "Encounter?date=lt2020-01-01") == set()
    resp = api.http.get("Patient?birthdate=1980-13-01")
    assert resp.status_code == 400 and resp.json()["issue"][0]["expression"] == ["birthdate"]
    resp = api.http.get("Patient?birthdate=zz1980")
    assert resp.status_code == 400


def test_last_updated(api: LiveServer, people: dict[str, str]) -> None:
    assert ids(api, "Patient?_lastUpdated=gt2000-01-01") == set(people.values())
    assert ids(api, "Patient?_lastUpdated=lt2000-01-01") == set()


def test_number_and_quantity(api: LiveServer) -> None:
    def obs(value: float, unit: str) -> str:
        return post(api, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": unit,
                                            "unit": unit}})

    a, b, c = obs(5.4, "mg"), obs(100, "g"), obs(99.6, "mg")
    assert ids(api, "Observation?value-quantity=5.4") == {a}
    assert ids(api, "Observation?value-quantity=100") == {b, c}  # implicit precision [99.5, 100.5)
    assert ids(api, "Observation?value-quantity=100.0") == {b}
    assert ids(api, "Observation?value-quantity=gt50") == {b, c}
    assert ids(api, "Observation?value-quantity=le99.6") == {a, c}
    assert ids(api, "Observation?value-quantity=gt50|http://unitsofmeasure.org|mg") == {b, c}  # 100 g > 50 mg (UCUM)
    assert ids(api, "Observation?value-quantity=gt1||g") == {b}
    assert ids(api, "Observation?value-quantity=ap100") == {b, c}
    assert ids(api, "Observation?value-quantity=ne100") == {a}
    pid = post(api, {"resourceType": "Patient"})  # referential integrity: the subject must exist
    r1 = post(api, {"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": f"Patient/{pid}"},
                    "prediction": [{"probabilityDecimal": 0.25}]})
    assert ids(api, "RiskAssessment?probability=lt0.3") == {r1}
    assert ids(api, "RiskAssessment?probability=0.25") == {r1}
    assert ids(api, "RiskAssessment?probability=0.2") == set()  # [0.15, 0.25)


def test_reference(api: LiveServer, people: dict[str, str]) -> None:
    chloe, bob = people["chloe"], people["bob"]
    o1 = post(api, {"resourceType": "Observation", "status": "final", "code": {"text": "a"},
                    "subject": {"reference": f"Patient/{chloe}"}})
    o2 = post(api, {"resourceType": "Observation", "status": "final", "code": {"text": "b"},
                    "subject": {"reference": f"Patient/{bob}/_history/1"}})
    o3 = post(api, {"resourceType": "Observation", "status": "final", "code": {"text": "c"},
                    "subject": {"reference": "http://elsewhere.org/fhir/Patient/9",
                                "identifier": {"system": "urn:mrn", "value": "9"}}})
    assert ids(api, f"Observation?subject=Patient/{chloe}") == {o1}
    assert ids(api, f"Observation?subject={chloe}") == {o1}
    assert ids(api, f"Observation?patient={chloe}") == {o1}
    assert ids(api, f"Observation?subject:Patient={chloe}") == {o1}
    assert ids(api, f"Observation?subject={api.url}/Patient/{chloe}") == {o1}
    assert ids(api, "Observation?subject=http://elsewhere.org/fhir/Patient/9") == {o3}
    assert ids(api, "Observation?subject=Patient/9") == set()
    assert ids(api, "Observation?subject:identifier=urn:mrn|9") == {o3}
    assert ids(api, f"Observation?subject=Group/{chloe}") == set()
    assert ids(api, "Observation?subject:missing=false") == {o1, o2, o3}
    # chaining and reverse chaining
    assert ids(api, "Observation?subject:Patient.name=chloe") == {o1}
    assert ids(api, "Observation?patient.gender=male") == {o2}
    assert ids(api, "Observation?subject.name=chloe,bob&subject.gender=male") == {o2}
    assert ids(api, "Patient?_has:Observation:subject:code:text=a") == {chloe}
    assert ids(api, "Patient?_has:Observation:subject:code:text=a,b") == {chloe, bob}
    resp = api.http.get("Observation?subject=Foo/1")
    assert resp.status_code == 400 and resp.json()["issue"][0]["expression"] == ["subject"]


def test_uri_and_meta(api: LiveServer) -> None:
    vs = post(api, {"resourceType": "ValueSet", "status": "active", "url": "http://example.org/fhir/ValueSet/a",
                    "meta": {"tag": [{"system": "urn:tags", "code": "t1"}],
                             "profile": ["http://example.org/StructureDefinition/p"]}})
    assert ids(api, "ValueSet?url=http://example.org/fhir/ValueSet/a") == {vs}
    assert ids(api, "ValueSet?url=http://example.org/fhir/ValueSet") == set()
    assert ids(api, "ValueSet?url:below=http://example.org/fhir") == {vs}
    assert ids(api, "ValueSet?url:above=http://example.org/fhir/ValueSet/a/b/c") == {vs}
    assert ids(api, "ValueSet?_tag=urn:tags|t1") == {vs}
    assert ids(api, "ValueSet?_profile=http://example.org/StructureDefinition/p") == {vs}


def test_composite(api: LiveServer) -> None:
    def bp(code: str, value: float) -> str:
        return post(api, {"resourceType": "Observation", "status": "final",
                          "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                          "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}})

    high, low = bp("8480-6", 150), bp("8480-6", 110)
    other = bp("8462-4", 150)
    assert ids(api, "Observation?code-value-quantity=http://loinc.org|8480-6$gt140") == {high}
    assert ids(api, "Observation?code-value-quantity=8480-6$gt100,8462-4$gt140") == {high, low, other}
    assert ids(api, "Observation?code-value-quantity=8480-6$lt100") == set()
    resp = api.http.get("Observation?code-value-quantity=8480-6")
    assert resp.status_code == 400 and resp.json()["issue"][0]["expression"] == ["code-value-quantity"]
