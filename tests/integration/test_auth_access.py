"""Scopes x roles x patient compartment, enforced inside the repository, over real HTTP on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.conftest import Backend
from tests.integration.test_auth_support import Smart, authorize, code_from, exchange, pkce, smart_server

REDIRECT = "http://127.0.0.1:9/callback"
JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend)


def _create(smart: Smart, resource: dict[str, Any]) -> str:
    r = smart.as_admin("POST", resource["resourceType"], content=orjson.dumps(resource), headers=JSON)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _user_token(smart: Smart, role: str, scope: str, *, fhir_user: str | None = None,
                patient: str | None = None, client_scope: str | None = None) -> dict[str, Any]:
    user = smart.user(role, fhir_user)
    client = smart.client(["authorization_code"], client_scope or scope, redirect_uris=[REDIRECT], public=True)
    verifier, challenge = pkce()
    form = {"patient": patient} if patient else None
    code = code_from(authorize(smart, client["client_id"], REDIRECT, scope, user, challenge=challenge, form=form),
                     REDIRECT)
    r = exchange(smart, client["client_id"], code, REDIRECT, verifier)
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.fixture(scope="module")
def records(smart: Smart) -> dict[str, str]:
    a = _create(smart, {"resourceType": "Patient", "name": [{"family": "Alpha"}]})
    b = _create(smart, {"resourceType": "Patient", "name": [{"family": "Beta"}]})
    lab = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                       "code": "laboratory"}]}
    vital = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                         "code": "vital-signs"}]}

    def obs(pid: str, category: dict[str, Any]) -> str:
        return _create(smart, {"resourceType": "Observation", "status": "final", "category": [category],
                               "code": {"text": "x"}, "subject": {"reference": f"Patient/{pid}"}})
    return {"a": a, "b": b, "obs_a_lab": obs(a, lab), "obs_a_vital": obs(a, vital), "obs_b": obs(b, lab)}


def _ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if "resource" in e}


def test_patient_token_sees_only_its_compartment(smart: Smart, records: dict[str, str]) -> None:
    token = _user_token(smart, "doctor", "launch/patient patient/*.rs", patient=records["a"])
    assert token["patient"] == records["a"]
    at = token["access_token"]
    assert smart.fhir("GET", f"Observation/{records['obs_a_lab']}", at).status_code == 200
    assert smart.fhir("GET", f"Patient/{records['a']}", at).status_code == 200
    assert smart.fhir("GET", f"Observation/{records['obs_b']}", at).status_code in (403, 404)
    assert smart.fhir("GET", f"Observation/{records['obs_b']}/_history/1", at).status_code in (403, 404)
    assert smart.fhir("GET", f"Patient/{records['b']}", at).status_code in (403, 404)
    found = _ids(smart.fhir("GET", "Observation", at).json())
    assert records["obs_b"] not in found and {records["obs_a_lab"], records["obs_a_vital"]} <= found
    by_subject = _ids(smart.fhir("GET", f"Observation?subject=Patient/{records['b']}", at).json())
    assert by_subject == set()
    history = _ids(smart.fhir("GET", "Observation/_history", at).json())
    assert records["obs_b"] not in history and records["obs_a_lab"] in history
    assert _ids(smart.fhir("GET", "_history", at).json()).isdisjoint({records["obs_b"], records["b"]})
    assert _ids(smart.fhir("GET", f"Observation/{records['obs_b']}/_history", at).json()) == set()
    # _include cannot pull the other patient in either.
    included = _ids(smart.fhir("GET", "Observation?_include=Observation:subject", at).json())
    assert records["b"] not in included
    # Read-only scopes: no writes, not even in the compartment; nor through a transaction Bundle.
    new_obs = {"resourceType": "Observation", "status": "final", "code": {"text": "y"},
               "subject": {"reference": f"Patient/{records['a']}"}}
    assert smart.fhir("POST", "Observation", at, content=orjson.dumps(new_obs), headers=JSON).status_code == 403
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation/{records['obs_b']}"}},
        {"request": {"method": "GET", "url": f"Observation/{records['obs_a_lab']}"}}]}
    out = smart.fhir("POST", "", at, content=orjson.dumps(bundle), headers=JSON).json()
    assert out["entry"][0]["response"]["status"].startswith(("403", "404"))
    assert out["entry"][1]["response"]["status"].startswith("200")


def test_patient_write_scope_stays_in_compartment(smart: Smart, records: dict[str, str]) -> None:
    token = _user_token(smart, "doctor", "launch/patient patient/Observation.cruds", patient=records["a"])
    at = token["access_token"]
    mine = {"resourceType": "Observation", "status": "final", "code": {"text": "y"},
            "subject": {"reference": f"Patient/{records['a']}"}}
    theirs = {**mine, "subject": {"reference": f"Patient/{records['b']}"}}
    assert smart.fhir("POST", "Observation", at, content=orjson.dumps(mine), headers=JSON).status_code == 201
    assert smart.fhir("POST", "Observation", at, content=orjson.dumps(theirs), headers=JSON).status_code == 403
    # Moving one of A's observations to B is refused, and so is touching B's.
    moved = {**theirs, "id": records["obs_a_vital"]}
    assert smart.fhir("PUT", f"Observation/{records['obs_a_vital']}", at, content=orjson.dumps(moved),
                      headers=JSON).status_code == 403
    assert smart.fhir("DELETE", f"Observation/{records['obs_b']}", at).status_code == 403
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": theirs, "request": {"method": "POST", "url": "Observation"}}]}
    assert smart.fhir("POST", "", at, content=orjson.dumps(tx), headers=JSON).status_code == 403
    assert smart.fhir("GET", f"Observation/{records['obs_b']}", smart.system_token("system/*.rs")).json()[
        "subject"]["reference"] == f"Patient/{records['b']}"


def test_granular_v2_category_scope(smart: Smart, records: dict[str, str]) -> None:
    scope = "launch/patient patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/" \
            "observation-category|laboratory"
    token = _user_token(smart, "doctor", scope, patient=records["a"], client_scope="launch/patient patient/*.rs")
    at = token["access_token"]
    assert smart.fhir("GET", f"Observation/{records['obs_a_lab']}", at).status_code == 200
    assert smart.fhir("GET", f"Observation/{records['obs_a_vital']}", at).status_code == 403
    assert _ids(smart.fhir("GET", "Observation", at).json()) == {records["obs_a_lab"]}


def test_patient_user_is_confined_to_own_record(smart: Smart, records: dict[str, str]) -> None:
    token = _user_token(smart, "patient", "launch/patient patient/*.rs user/*.rs", fhir_user=f"Patient/{records['a']}")
    assert token["patient"] == records["a"]
    at = token["access_token"]
    assert smart.fhir("GET", f"Observation/{records['obs_a_lab']}", at).status_code == 200
    assert smart.fhir("GET", f"Observation/{records['obs_b']}", at).status_code == 403  # user/ scope or not
    assert records["b"] not in _ids(smart.fhir("GET", "Patient", at).json())


def test_roles_cap_the_scopes(smart: Smart, records: dict[str, str]) -> None:
    receptionist = _user_token(smart, "receptionist", "user/*.rs")["access_token"]
    assert smart.fhir("GET", f"Patient/{records['a']}", receptionist).status_code == 200
    assert smart.fhir("GET", f"Observation/{records['obs_a_lab']}", receptionist).status_code == 403
    assert _ids(smart.fhir("GET", "Observation", receptionist).json()) == set()

    billing = _user_token(smart, "billing_officer", "user/*.cruds")["access_token"]
    assert smart.fhir("GET", f"Observation/{records['obs_a_lab']}", billing).status_code == 200
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "z"},
           "subject": {"reference": f"Patient/{records['a']}"}}
    assert smart.fhir("POST", "Observation", billing, content=orjson.dumps(obs), headers=JSON).status_code == 403
    account = {"resourceType": "Account", "status": "active"}
    assert smart.fhir("POST", "Account", billing, content=orjson.dumps(account), headers=JSON).status_code == 201

    # Requested ∩ client's allowed: a doctor through a read-only client cannot write.
    doctor = _user_token(smart, "doctor", "user/*.cruds", client_scope="user/*.rs")
    assert doctor["scope"] == "user/*.rs"
    assert smart.fhir("POST", "Account", doctor["access_token"], content=orjson.dumps(account),
                      headers=JSON).status_code == 403
