"""``Patient/[id]/$everything``: the patient, its compartment and what that references, paged by cursor; a
patient-scoped token gets only its own record (issue 4 point 7). Real HTTP, real tokens, both databases."""

from __future__ import annotations

from typing import Any

import orjson

from tests.integration.test_auth_support import Smart
from tests.integration.test_search_access import JSON, _a_observations, _b_side, _get, _ids, data, smart

__all__ = ["data", "smart"]  # the module fixtures, shared with the search access tests


def _all_pages(smart: Smart, path: str, token: str) -> tuple[list[str], set[str], list[dict[str, Any]]]:
    matches: list[str] = []
    included: set[str] = set()
    bundles = []
    next_path: str | None = path
    while next_path:
        bundle = _get(smart, next_path, token)
        bundles.append(bundle)
        matches += list(_ids(bundle, "match"))
        included |= _ids(bundle, "include")
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        next_path = nxt[0].split("/fhir/", 1)[1] if nxt else None
    return matches, included, bundles


def test_everything_returns_the_patient_its_compartment_and_what_it_references(smart: Smart,
                                                                               data: dict[str, Any]) -> None:
    a = data["a"]
    matches, included, bundles = _all_pages(smart, f"Patient/{a}/$everything?_count=10", data["admin"])
    assert len(matches) == len(set(matches))  # cursor paging: no resource twice
    assert set(matches) == {a, data["enc_a"], *_a_observations(data)}
    assert len(bundles) == 3 and all(b["type"] == "searchset" for b in bundles)
    # A's Observation derives from B's: the admin sees it included (referenced), not as a compartment match.
    assert data["secret"] in included and data["secret"] not in matches


def test_a_patient_token_gets_only_its_own_record(smart: Smart, data: dict[str, Any]) -> None:
    token = data["token"]
    matches, included, _ = _all_pages(smart, f"Patient/{data['a']}/$everything?_count=50", token)
    assert set(matches) == {data["a"], data["enc_a"], *_a_observations(data)}
    assert not (set(matches) | included) & _b_side(data)  # B's Observation that A's derives from: left out
    r = smart.fhir("GET", f"Patient/{data['b']}/$everything", token)
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"


def test_type_and_since_narrow_the_result_and_start_is_reported_unapplied(smart: Smart,
                                                                          data: dict[str, Any]) -> None:
    a, admin = data["a"], data["admin"]
    bundle = _get(smart, f"Patient/{a}/$everything?_type=Encounter&start=2020-01-01", admin)
    assert _ids(bundle, "match") == {data["enc_a"]}
    outcome = [e for e in bundle["entry"] if e.get("search", {}).get("mode") == "outcome"]
    assert outcome and outcome[0]["resource"]["issue"][0]["expression"] == ["start"]
    assert _ids(_get(smart, f"Patient/{a}/$everything?_since=2999-01-01T00:00:00Z", admin), "match") == set()
    body = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Encounter"}]}
    r = smart.fhir("POST", f"Patient/{a}/$everything", admin, content=orjson.dumps(body), headers=JSON)
    assert r.status_code == 200, r.text
    assert _ids(r.json(), "match") == {data["enc_a"]}


def test_bad_input_names_what_is_at_fault(smart: Smart, data: dict[str, Any]) -> None:
    admin = data["admin"]
    r = smart.fhir("GET", f"Patient/{data['a']}/$everything?_type=Nope", admin)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["_type"]
    r = smart.fhir("GET", "Patient/$everything", admin)
    assert r.status_code == 400 and "Patient/[id]/$everything" in r.json()["issue"][0]["diagnostics"]
    assert smart.fhir("GET", "Patient/no-such-patient/$everything", admin).status_code == 404
