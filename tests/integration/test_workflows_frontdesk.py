"""The front desk's rules (issue 17 items 1-3) over real HTTP with real tokens, on SQLite and PostgreSQL:
the MRN (consecutive under 24 concurrent creates on PostgreSQL), ABHA identifiers checked and unique,
Patient/$match, the possible-duplicate warning on create, no delete of a patient with clinical data, and
Patient/$merge / $unmerge."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest

from fhir_server.workflows.rules import RULE_SYSTEM
from tests.conftest import Backend
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import Smart, smart_server

JSON = {"Content-Type": "application/fhir+json"}
MRN = "https://fhir-server.dev/sid/mrn"
ABHA = "https://healthid.ndhm.gov.in"
ABHA_ADDRESS = "https://healthid.ndhm.gov.in/abha-address"
GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    backend.truncate()
    yield from smart_server(backend, workflows="frontdesk")


@pytest.fixture(scope="module")
def tokens(smart: Smart) -> dict[str, str]:
    return {role: str(_user_token(smart, role, "user/*.cruds")["access_token"])
            for role in ("receptionist", "nurse")}


def _rule(r: httpx.Response) -> str:
    issue = r.json()["issue"][0]
    return str(issue["details"]["coding"][0]["code"]) if "details" in issue else issue.get("diagnostics", "")


def _post(smart: Smart, rtype: str, body: dict[str, Any], token: str | None = None,
          **headers: str) -> httpx.Response:
    token = token or smart.system_token("system/*.cruds")
    return smart.fhir("POST", rtype, token, content=orjson.dumps({"resourceType": rtype, **body}),
                      headers={**JSON, **headers})


def _patient(given: str, family: str, birth: str = "1980-04-12", gender: str = "male", **extra: Any) -> dict[str, Any]:
    return {"name": [{"given": given.split(), "family": family}], "birthDate": birth, "gender": gender, **extra}


def _unique() -> str:
    """A surname no other test's patient sounds like."""
    return "Zq" + uuid.uuid4().hex[:10].translate(str.maketrans("0123456789", "ghjklmnpqr"))


def _mrn(patient: dict[str, Any]) -> str:
    return next(str(i["value"]) for i in patient["identifier"] if i["system"] == MRN)


def _today() -> str:
    return datetime.now(UTC).astimezone(ZoneInfo("Asia/Kolkata")).strftime("%Y%m%d")


# --- item 1: MRN and national identifiers ---------------------------------------------------------------------

def test_every_new_patient_gets_the_days_next_mrn_which_never_changes(smart: Smart) -> None:
    a = _post(smart, "Patient", _patient("Anil", _unique()))
    b = _post(smart, "Patient", _patient("Bina", _unique(), gender="female"))
    assert a.status_code == b.status_code == 201, a.text
    ma, mb = _mrn(a.json()), _mrn(b.json())
    assert ma.startswith(f"PT-{_today()}-") and len(ma) == len("PT-20261207-0001")
    assert int(mb[-4:]) == int(ma[-4:]) + 1
    admin = smart.system_token("system/*.cruds")
    # an update that leaves the MRN out keeps it; one that changes it is refused
    body = {**a.json(), "identifier": []}
    r = smart.fhir("PUT", f"Patient/{a.json()['id']}", admin, content=orjson.dumps(body), headers=JSON)
    assert r.status_code == 200 and _mrn(r.json()) == ma, r.text
    body["identifier"] = [{"system": MRN, "value": "PT-19990101-0001"}]
    r = smart.fhir("PUT", f"Patient/{a.json()['id']}", admin, content=orjson.dumps(body), headers=JSON)
    assert r.status_code == 422 and _rule(r) == "mrn-immutable", r.text
    assert r.json()["issue"][0]["expression"] == ["Patient.identifier[0].value"]
    # the server assigns it: a client's MRN on create is refused, and the refused create used no number
    r = _post(smart, "Patient", _patient("Chetan", _unique(), identifier=[{"system": MRN, "value": "PT-1"}]))
    assert r.status_code == 422 and _rule(r) == "mrn-assigned-by-server", r.text
    # a create refused after its number was drawn (invalid content) gives the number back
    assert _post(smart, "Patient", _patient("Chetan", _unique(), gender="robot")).status_code == 400
    c = _post(smart, "Patient", _patient("Deepa", _unique(), gender="female"))
    assert int(_mrn(c.json())[-4:]) == int(mb[-4:]) + 1


def test_abha_number_and_address_are_checked_and_held_by_one_patient(smart: Smart) -> None:
    number = "91" + uuid.uuid4().int.__str__()[:12]
    r = _post(smart, "Patient", _patient("Esha", _unique(), gender="female",
                                         identifier=[{"system": ABHA, "value": number},
                                                     {"system": ABHA_ADDRESS, "value": f"Esha.{number[:6]}@SBX"}]))
    assert r.status_code == 201, r.text
    shown = f"{number[:2]}-{number[2:6]}-{number[6:10]}-{number[10:]}"
    values = {i["system"]: i["value"] for i in r.json()["identifier"]}
    assert values[ABHA] == shown and values[ABHA_ADDRESS] == f"esha.{number[:6]}@sbx"
    bad = _post(smart, "Patient", _patient("Farah", _unique(), identifier=[
        {"system": "urn:other", "value": "x"}, {"system": ABHA, "value": "12-3456"}]))
    assert bad.status_code == 422 and _rule(bad) == "identifier-invalid", bad.text
    assert bad.json()["issue"][0]["expression"] == ["Patient.identifier[1].value"]
    bad = _post(smart, "Patient", _patient("Farah", _unique(), identifier=[{"system": ABHA_ADDRESS,
                                                                            "value": "farah@gmail.com"}]))
    assert bad.status_code == 422 and _rule(bad) == "identifier-invalid", bad.text
    # the same number in another form, on another patient: 409
    again = _post(smart, "Patient", _patient("Gopal", _unique(), identifier=[{"system": ABHA, "value": shown}]))
    assert again.status_code == 409 and _rule(again) == "identifier-duplicate", again.text
    assert again.json()["issue"][0]["expression"] == ["Patient.identifier[0].value"]


def test_24_concurrent_registrations_get_consecutive_mrns(smart: Smart) -> None:
    if smart.backend.name != "postgresql":
        pytest.skip("concurrency of writers: PostgreSQL (SQLite serialises writers by design)")
    token = smart.system_token("system/*.cruds")
    barrier = threading.Barrier(24)
    results: list[httpx.Response] = []

    def register(n: int) -> None:
        with httpx.Client(timeout=60) as http:
            body = orjson.dumps({"resourceType": "Patient", **_patient(f"Person{n}", _unique())})
            barrier.wait()
            results.append(http.post(f"{smart.base}/Patient", content=body,
                                     headers={**JSON, "Authorization": f"Bearer {token}"}))

    threads = [threading.Thread(target=register, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in results] == [201] * 24, [r.text for r in results if r.status_code != 201]
    numbers = sorted(int(_mrn(r.json())[-4:]) for r in results)
    assert numbers == list(range(numbers[0], numbers[0] + 24))


def test_concurrent_registrations_with_one_abha_number_make_one_patient(smart: Smart) -> None:
    if smart.backend.name != "postgresql":
        pytest.skip("concurrency of writers: PostgreSQL (SQLite serialises writers by design)")
    token = smart.system_token("system/*.cruds")
    number = "42" + str(uuid.uuid4().int)[:12]
    barrier = threading.Barrier(10)
    statuses: list[int] = []

    def register(n: int) -> None:
        body = orjson.dumps({"resourceType": "Patient", **_patient(f"Twin{n}", _unique(), birth="2001-01-01"),
                             "identifier": [{"system": ABHA, "value": number}]})
        with httpx.Client(timeout=60) as http:
            barrier.wait()
            statuses.append(http.post(f"{smart.base}/Patient", content=body,
                                      headers={**JSON, "Authorization": f"Bearer {token}"}).status_code)

    threads = [threading.Thread(target=register, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(statuses) == [201] + [409] * 9, statuses


# --- item 2: the master patient index ---------------------------------------------------------------------------

def _match(smart: Smart, patient: dict[str, Any], token: str | None = None, **params: Any) -> httpx.Response:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient", **patient}},
        *({"name": k, f"value{'Boolean' if isinstance(v, bool) else 'Integer'}": v} for k, v in params.items())]}
    return smart.fhir("POST", "Patient/$match", token or smart.system_token("system/*.cruds"),
                      content=orjson.dumps(body), headers=JSON)


def test_match_scores_and_grades_candidates(smart: Smart, tokens: dict[str, str]) -> None:
    family = _unique()
    home = {"telecom": [{"system": "phone", "value": "+91 98450 12345"}],
            "address": [{"line": ["12 MG Road"], "city": "Bengaluru", "postalCode": "560001"}]}
    ramesh = _post(smart, "Patient", _patient("Ramesh Kumar", family, **home)).json()
    other = _post(smart, "Patient", _patient("Suresh", family, birth="1991-01-30")).json()
    # family name first, the given name as an initial, a typo in the birth date's day and month swapped
    r = _match(smart, {"name": [{"text": f"{family} R. Kumar"}], "birthDate": "1980-12-04", "gender": "male",
                       "telecom": [{"system": "phone", "value": "9845012345"}]}, tokens["receptionist"])
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["type"] == "searchset" and bundle["entry"], bundle
    first = bundle["entry"][0]
    assert first["resource"]["id"] == ramesh["id"] and first["search"]["mode"] == "match"
    assert first["search"]["extension"][0] == {"url": GRADE, "valueCode": "probable"} or \
        first["search"]["extension"][0]["valueCode"] == "certain"
    assert 0.85 <= first["search"]["score"] <= 1.0
    assert other["id"] not in [e["resource"]["id"] for e in bundle["entry"]]
    # the MRN is certain; count and onlyCertainMatches
    by_mrn = _match(smart, {"identifier": [{"system": MRN, "value": _mrn(ramesh)}], "name": [{"family": "X"}]},
                    onlyCertainMatches=True, count=1).json()
    assert [e["resource"]["id"] for e in by_mrn["entry"]] == [ramesh["id"]]
    assert by_mrn["entry"][0]["search"]["score"] == 1.0
    nobody = _match(smart, _patient("Ramesh Kumar", family, birth="1955-07-01", gender="female"),
                    onlyCertainMatches=True).json()
    assert nobody.get("entry", []) == []
    bad = smart.fhir("POST", "Patient/$match", tokens["receptionist"],
                     content=orjson.dumps({"resourceType": "Parameters", "parameter": []}), headers=JSON)
    assert bad.status_code == 400, bad.text


def test_a_likely_duplicate_is_warned_of_or_refused(smart: Smart, tokens: dict[str, str]) -> None:
    family = _unique()
    phone = {"telecom": [{"system": "phone", "value": "9000011111"}]}
    first = _post(smart, "Patient", _patient("Lakshmi", family, gender="female", **phone), tokens["receptionist"])
    assert first.status_code == 201 and "warning" not in first.text, first.text
    twin = _patient("Laxmi", family, gender="female", **phone)
    strict = _post(smart, "Patient", twin, tokens["receptionist"], Prefer="handling=strict")
    assert strict.status_code == 409 and _rule(strict) == "patient-possible-duplicate", strict.text
    assert first.json()["id"] in strict.json()["issue"][0]["diagnostics"]
    warned = _post(smart, "Patient", twin, tokens["receptionist"], Prefer="return=OperationOutcome")
    assert warned.status_code == 201, warned.text
    issues = warned.json()["issue"]
    warning = next(i for i in issues if i["severity"] == "warning")
    assert warning["details"]["coding"] == [{"system": RULE_SYSTEM, "code": "patient-possible-duplicate"}]
    # a conditional create's criteria say what a duplicate is: no fuzzy check
    cond = _post(smart, "Patient", twin, tokens["receptionist"], Prefer="handling=strict",
                 **{"If-None-Exist": f"family={_unique()}"})
    assert cond.status_code == 201, cond.text
    # in a transaction: Bundle.entry.response.outcome
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:" + str(uuid.uuid4()), "resource": {"resourceType": "Patient", **twin},
         "request": {"method": "POST", "url": "Patient"}}]}
    r = smart.fhir("POST", "", smart.system_token("system/*.cruds"), content=orjson.dumps(bundle), headers=JSON)
    assert r.status_code == 200, r.text
    outcome = r.json()["entry"][0]["response"]["outcome"]
    assert any(i["severity"] == "warning" for i in outcome["issue"])
    # someone else altogether: no warning
    clean = _post(smart, "Patient", _patient("Vikram", _unique(), birth="2001-02-03"), tokens["receptionist"],
                  Prefer="return=OperationOutcome")
    assert clean.status_code == 201 and all(i["severity"] != "warning" for i in clean.json()["issue"]), clean.text


# --- item 3: deactivate, merge, unmerge -------------------------------------------------------------------------

def _observation(smart: Smart, patient_id: str) -> dict[str, Any]:
    r = _post(smart, "Observation", {"status": "final", "code": {"text": "weight"},
                                     "subject": {"reference": f"Patient/{patient_id}"},
                                     "valueQuantity": {"value": 70, "unit": "kg"}})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_a_patient_with_clinical_data_is_deactivated_not_deleted(smart: Smart) -> None:
    admin = smart.system_token("system/*.cruds")
    kept = _post(smart, "Patient", _patient("Harish", _unique())).json()
    _observation(smart, kept["id"])
    r = smart.fhir("DELETE", f"Patient/{kept['id']}", admin)
    assert r.status_code == 409 and _rule(r) == "patient-has-clinical-data", r.text
    assert "active" in r.json()["issue"][0]["diagnostics"]
    assert smart.fhir("GET", f"Patient/{kept['id']}", admin).status_code == 200
    empty = _post(smart, "Patient", _patient("Indu", _unique(), gender="female")).json()
    assert smart.fhir("DELETE", f"Patient/{empty['id']}", admin).status_code == 204


def _merge_params(source: str, target: str, **extra: Any) -> bytes:
    params = [{"name": "source-patient", "valueReference": {"reference": f"Patient/{source}"}},
              {"name": "target-patient", "valueReference": {"reference": f"Patient/{target}"}}]
    params += [{"name": k, **v} for k, v in extra.items()]
    return orjson.dumps({"resourceType": "Parameters", "parameter": params})


def test_merge_moves_every_reference_and_unmerge_puts_them_back(smart: Smart, tokens: dict[str, str]) -> None:
    admin = smart.system_token("system/*.cruds")
    family = _unique()
    narrative = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Jaya, diabetic</div>'}
    source = _post(smart, "Patient", {**_patient("Jaya", family, gender="female"), "text": narrative}).json()
    target = _post(smart, "Patient", _patient("Jaya", family, gender="female", birth="1980-04-21"),
                   Prefer="handling=lenient").json()
    obs = _observation(smart, source["id"])
    theirs = _observation(smart, target["id"])
    rec = tokens["receptionist"]
    assert smart.fhir("POST", "Patient/$merge", tokens["nurse"], content=_merge_params(source["id"], target["id"]),
                      headers=JSON).status_code == 403
    preview = smart.fhir("POST", "Patient/$merge", rec, headers=JSON,
                         content=_merge_params(source["id"], target["id"], preview={"valueBoolean": True}))
    assert preview.status_code == 200 and "1 resource" in preview.text, preview.text
    assert smart.fhir("GET", f"Observation/{obs['id']}", admin).json()["subject"]["reference"] == \
        f"Patient/{source['id']}"
    r = smart.fhir("POST", "Patient/$merge", rec, content=_merge_params(source["id"], target["id"]), headers=JSON)
    assert r.status_code == 200, r.text
    out = {p["name"]: p for p in r.json()["parameter"]}
    assert {"reference": f"Patient/{source['id']}"} in [lk["other"] for lk in out["result"]["resource"]["link"]]
    assert "text" not in out["result"]["resource"]  # the receptionist's view
    moved = smart.fhir("GET", f"Observation/{obs['id']}", admin).json()
    assert moved["subject"]["reference"] == f"Patient/{target['id']}"
    src = smart.fhir("GET", f"Patient/{source['id']}", admin).json()
    assert src["active"] is False and src["link"] == [{"other": {"reference": f"Patient/{target['id']}"},
                                                       "type": "replaced-by"}]
    assert src["text"] == narrative  # what the receptionist may not see is kept, not erased by the merge
    prov_ref = out["provenance"]["valueReference"]["reference"]
    prov = smart.fhir("GET", prov_ref, admin).json()
    assert prov["activity"]["coding"][0]["code"] == "merge"
    assert f"Observation/{obs['id']}/_history/1" in [e["what"]["reference"] for e in prov["entity"]]
    # the merged patient is no candidate any more; merging it again is a conflict
    found = _match(smart, _patient("Jaya", family, gender="female")).json()
    assert source["id"] not in [e["resource"]["id"] for e in found.get("entry", [])]
    again = smart.fhir("POST", "Patient/$merge", rec, content=_merge_params(source["id"], target["id"]),
                       headers=JSON)
    assert again.status_code == 409 and _rule(again) == "merge-source-merged", again.text
    # unmerge from the Provenance: the moved reference goes back, the target's own stays
    body = orjson.dumps({"resourceType": "Parameters", "parameter": [
        {"name": "provenance", "valueReference": {"reference": prov_ref}}]})
    assert smart.fhir("POST", "Patient/$unmerge", tokens["nurse"], content=body, headers=JSON).status_code == 403
    u = smart.fhir("POST", "Patient/$unmerge", rec, content=body, headers=JSON)
    assert u.status_code == 200, u.text
    assert smart.fhir("GET", f"Observation/{obs['id']}", admin).json()["subject"]["reference"] == \
        f"Patient/{source['id']}"
    assert smart.fhir("GET", f"Observation/{theirs['id']}", admin).json()["subject"]["reference"] == \
        f"Patient/{target['id']}"
    src = smart.fhir("GET", f"Patient/{source['id']}", admin).json()
    assert "active" not in src and "link" not in src
    assert "link" not in smart.fhir("GET", f"Patient/{target['id']}", admin).json()
    twice = smart.fhir("POST", "Patient/$unmerge", rec, content=body, headers=JSON)
    assert twice.status_code == 409 and _rule(twice) == "unmerge-not-merged", twice.text


def test_merge_refuses_a_patient_into_itself_or_into_an_inactive_one(smart: Smart, tokens: dict[str, str]) -> None:
    a = _post(smart, "Patient", _patient("Kiran", _unique())).json()
    b = _post(smart, "Patient", {**_patient("Kamal", _unique(), birth="1999-09-09"), "active": False}).json()
    rec = tokens["receptionist"]
    r = smart.fhir("POST", "Patient/$merge", rec, content=_merge_params(a["id"], a["id"]), headers=JSON)
    assert r.status_code == 422 and _rule(r) == "merge-same-patient", r.text
    r = smart.fhir("POST", "Patient/$merge", rec, content=_merge_params(a["id"], b["id"]), headers=JSON)
    assert r.status_code == 409 and _rule(r) == "merge-target-inactive", r.text
