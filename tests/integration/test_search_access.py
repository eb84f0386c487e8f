"""A patient-scoped token sees nothing of another patient through any search feature (issue 4 point 7):
the compartment restriction is part of the search SQL, so pages are full, totals exact, and chains, _has and
includes cannot tell that hidden resources exist. Real HTTP, real tokens, both databases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.conftest import Backend
from tests.integration.test_auth_support import Smart, authorize, code_from, exchange, pkce, smart_server

REDIRECT = "http://127.0.0.1:9/callback"
JSON = {"Content-Type": "application/fhir+json"}
N_A, N_B = 23, 31  # Observations of each patient: pages of 10 must be full despite B's in between


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    backend.truncate()
    yield from smart_server(backend)


def _patient_token(smart: Smart, patient: str, scope: str = "launch/patient patient/*.rs") -> str:
    user = smart.user("doctor")
    client = smart.client(["authorization_code"], scope, redirect_uris=[REDIRECT], public=True)
    verifier, challenge = pkce()
    code = code_from(authorize(smart, client["client_id"], REDIRECT, scope, user, challenge=challenge,
                               form={"patient": patient}), REDIRECT)
    r = exchange(smart, client["client_id"], code, REDIRECT, verifier)
    assert r.status_code == 200 and r.json()["patient"] == patient, r.text
    return str(r.json()["access_token"])


@pytest.fixture(scope="module")
def data(smart: Smart) -> dict[str, Any]:
    admin = smart.system_token("system/*.cruds")

    def create(resource: dict[str, Any]) -> str:
        r = smart.fhir("POST", resource["resourceType"], admin, content=orjson.dumps(resource), headers=JSON)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    a = create({"resourceType": "Patient", "name": [{"family": "Alpha"}]})
    b = create({"resourceType": "Patient", "name": [{"family": "Beta"}]})
    org = create({"resourceType": "Organization", "name": "Hospital"})
    enc_a = create({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                    "subject": {"reference": f"Patient/{a}"}})
    enc_b = create({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                    "subject": {"reference": f"Patient/{b}"}})

    def obs(pid: str, code: str, **extra: Any) -> str:
        return create({"resourceType": "Observation", "status": "final",
                       "code": {"coding": [{"system": "http://example.org/codes", "code": code}]},
                       "subject": {"reference": f"Patient/{pid}"}, **extra})

    # B's first, A's after, then more of B: A's are neither the first nor the last rows of any scan.
    obs_b = [obs(b, "common") for _ in range(N_B // 2)]
    obs_a = [obs(a, "common") for _ in range(N_A)]
    obs_b += [obs(b, "common") for _ in range(N_B - N_B // 2)]
    secret = obs(b, "secret-b", encounter={"reference": f"Encounter/{enc_b}"})
    # A's Observation pointing at B's (derived-from) and B's pointing at A's: chains, _has and includes
    # through these must not reveal B's.
    a_derived = obs(a, "a-derived", derivedFrom=[{"reference": f"Observation/{secret}"}],
                    encounter={"reference": f"Encounter/{enc_a}"})
    a_source = obs(a, "a-source")
    b_derived = obs(b, "secret-b", derivedFrom=[{"reference": f"Observation/{a_source}"}])
    return {"a": a, "b": b, "org": org, "enc_a": enc_a, "enc_b": enc_b, "obs_a": obs_a, "obs_b": obs_b,
            "secret": secret, "a_derived": a_derived, "a_source": a_source, "b_derived": b_derived,
            "token": _patient_token(smart, a), "admin": admin}


def _get(smart: Smart, path: str, token: str, status: int = 200) -> dict[str, Any]:
    r = smart.fhir("GET", path, token)
    assert r.status_code == status, (path, r.text)
    return dict(r.json())


def _ids(bundle: dict[str, Any], mode: str | None = None) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])
            if "resource" in e and e.get("search", {}).get("mode") != "outcome"
            and mode in (None, e.get("search", {}).get("mode"))}


def _b_side(data: dict[str, Any]) -> set[str]:
    return {data["b"], data["enc_b"], data["secret"], data["b_derived"], *data["obs_b"]}


def _a_observations(data: dict[str, Any]) -> set[str]:
    return {*data["obs_a"], data["a_derived"], data["a_source"]}


def test_plain_search_pages_are_full_and_the_total_exact(smart: Smart, data: dict[str, Any]) -> None:
    token, seen, pages = data["token"], [], []
    path: str | None = "Observation?_count=10&_total=accurate"
    while path:
        bundle = _get(smart, path, token)
        assert bundle["total"] == len(_a_observations(data))  # the admin would count B's too
        pages.append(len(_ids(bundle)))
        seen += list(_ids(bundle))
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        path = nxt[0].split("/fhir/", 1)[1] if nxt else None
    assert set(seen) == _a_observations(data) and len(seen) == len(set(seen))
    assert pages == [10, 10, 5]  # 25 of A's: full pages, no short page where B's were skipped
    admin_total = _get(smart, "Observation?_total=accurate&_count=1", data["admin"])["total"]
    assert admin_total == len(_a_observations(data)) + N_B + 2
    assert _get(smart, "Observation?_summary=count", token)["total"] == len(_a_observations(data))


def test_id_and_value_searches_find_nothing_of_the_other_patient(smart: Smart, data: dict[str, Any]) -> None:
    token = data["token"]
    assert _ids(_get(smart, f"Observation?_id={data['secret']}", token)) == set()
    assert _get(smart, f"Observation?_id={data['secret']}&_total=accurate", token)["total"] == 0
    assert _ids(_get(smart, f"Patient?_id={data['b']}", token)) == set()
    assert _ids(_get(smart, "Patient?family=Beta", token)) == set()
    assert _ids(_get(smart, "Patient", token)) == {data["a"]}
    assert _get(smart, "Observation?code=secret-b&_total=accurate", token)["total"] == 0
    assert _get(smart, "Observation?code=secret-b&_total=accurate", data["admin"])["total"] == 2


def test_chains_and_has_cannot_probe_hidden_resources(smart: Smart, data: dict[str, Any]) -> None:
    token = data["token"]
    # A's a_derived points at B's secret: the chain must not see secret's code.
    chained = "Observation?derived-from:Observation.code=secret-b"
    assert _ids(_get(smart, chained, data["admin"])) == {data["a_derived"]}  # the data really has the link
    assert _ids(_get(smart, chained, token)) == set()
    assert _ids(_get(smart, "Observation?subject:Patient.family=Beta", token)) == set()
    # B's b_derived points at A's a_source: _has must not see that B's Observation exists.
    has = "Observation?_has:Observation:derived-from:code=secret-b"
    assert _ids(_get(smart, has, data["admin"])) == {data["a_source"]}
    assert _ids(_get(smart, has, token)) == set()
    assert _ids(_get(smart, "Patient?_has:Observation:subject:code=secret-b", token)) == set()
    assert _ids(_get(smart, "Patient?_has:Observation:subject:code=a-source", token)) == {data["a"]}
    # Chains inside _has: Encounters of A's that an Observation of B's encounter... nothing of B's shows.
    nested = f"Encounter?_has:Observation:encounter:subject:Patient._id={data['b']}"
    assert _ids(_get(smart, nested, data["admin"])) == {data["enc_b"]}
    assert _ids(_get(smart, nested, token)) == set()


def test_includes_and_revincludes_leave_out_hidden_resources(smart: Smart, data: dict[str, Any]) -> None:
    token = data["token"]
    inc = f"Observation?_id={data['a_derived']}&_include=Observation:derived-from"
    assert _ids(_get(smart, inc, data["admin"]), "include") == {data["secret"]}
    assert _ids(_get(smart, inc, token), "include") == set()
    rev = f"Observation?_id={data['a_source']}&_revinclude=Observation:derived-from"
    assert _ids(_get(smart, rev, data["admin"]), "include") == {data["b_derived"]}
    assert _ids(_get(smart, rev, token), "include") == set()
    iterate = (f"Encounter?_id={data['enc_a']}&_revinclude=Observation:encounter"
               "&_include:iterate=Observation:derived-from&_include:iterate=Observation:encounter")
    assert _ids(_get(smart, iterate, data["admin"]), "include") == {data["a_derived"], data["secret"],
                                                                   data["enc_b"]}
    assert _ids(_get(smart, iterate, token), "include") == {data["a_derived"]}
    wild = f"Observation?_id={data['a_derived']}&_include=*"
    assert _ids(_get(smart, wild, token)).isdisjoint(_b_side(data))


def test_compartment_and_system_search(smart: Smart, data: dict[str, Any]) -> None:
    token = data["token"]
    assert _ids(_get(smart, f"Patient/{data['b']}/Observation", token)) == set()
    assert _get(smart, f"Patient/{data['b']}/Observation?_total=accurate", token)["total"] == 0
    assert _ids(_get(smart, f"Patient/{data['a']}/Observation?_count=100", token)) == _a_observations(data)
    both = _get(smart, "?_type=Patient,Observation,Encounter&_count=100&_total=accurate", token)
    assert _ids(both) == {data["a"], data["enc_a"], *_a_observations(data)}
    assert both["total"] == len(_ids(both))
    # Organizations are in no patient's compartment: left out of a system search, refused on their own.
    assert _ids(_get(smart, "?_type=Patient,Organization", token)) == {data["a"]}
    _get(smart, "Organization", token, 403)
    _get(smart, "?_type=Organization", token, 403)


def test_history_shows_nothing_of_the_other_patient(smart: Smart, data: dict[str, Any]) -> None:
    token = data["token"]
    assert _ids(_get(smart, "Observation/_history?_count=1000", token)).isdisjoint(_b_side(data))
    _get(smart, f"Observation/{data['secret']}/_history", token, 403)  # not 200 with a total of its versions
    assert _ids(_get(smart, "_history?_count=1000", token)).isdisjoint(_b_side(data))
    assert data["a"] in _ids(_get(smart, f"Patient/{data['a']}/_history", token))


def test_a_role_that_never_reads_a_type_is_refused(smart: Smart, data: dict[str, Any]) -> None:
    user = smart.user("receptionist")
    scope = "user/*.rs"
    client = smart.client(["authorization_code"], scope, redirect_uris=[REDIRECT], public=True)
    verifier, challenge = pkce()
    code = code_from(authorize(smart, client["client_id"], REDIRECT, scope, user, challenge=challenge), REDIRECT)
    token = str(exchange(smart, client["client_id"], code, REDIRECT, verifier).json()["access_token"])
    _get(smart, "Observation", token, 403)
    assert {data["a"], data["b"]} <= _ids(_get(smart, "Patient?_count=100", token))
    # Patients by their Observations: the receptionist may not look into Observations that way either.
    assert _ids(_get(smart, "Patient?_has:Observation:subject:code=secret-b", token)) == set()


def test_a_patient_user_sees_only_their_own_record(smart: Smart, data: dict[str, Any]) -> None:
    user = smart.user("patient", f"Patient/{data['a']}")
    scope = "user/*.rs"  # whatever the scopes say, a patient user is confined to their own compartment
    client = smart.client(["authorization_code"], scope, redirect_uris=[REDIRECT], public=True)
    verifier, challenge = pkce()
    code = code_from(authorize(smart, client["client_id"], REDIRECT, scope, user, challenge=challenge), REDIRECT)
    token = str(exchange(smart, client["client_id"], code, REDIRECT, verifier).json()["access_token"])
    bundle = _get(smart, "Observation?_count=10&_total=accurate", token)
    assert bundle["total"] == len(_a_observations(data)) and len(_ids(bundle)) == 10
    assert _ids(_get(smart, "Observation?_has:Observation:derived-from:code=secret-b", token)) == set()
    assert _ids(_get(smart, f"Patient?_id={data['b']}", token)) == set()


def test_estimated_totals_and_post_search_are_filtered_too(smart: Smart, data: dict[str, Any]) -> None:
    token = data["token"]
    estimate = _get(smart, "Observation?_total=estimate&_count=1", token)
    assert isinstance(estimate["total"], int)  # PostgreSQL: the planner's estimate of the filtered query
    r = smart.fhir("POST", "Observation/_search", token, content=f"code=secret-b&_id={data['secret']}",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and _ids(r.json()) == set()
    # a conditional create whose criteria match only a hidden resource does not see it (nor says it exists)
    body = {"resourceType": "Observation", "status": "final", "code": {"text": "mine"},
            "subject": {"reference": f"Patient/{data['a']}"}}
    writer = _patient_token(smart, data["a"], "launch/patient patient/*.cruds")
    r = smart.fhir("POST", "Observation", writer, content=orjson.dumps(body),
                   headers={**JSON, "If-None-Exist": f"_id={data['secret']}"})
    assert r.status_code == 201, r.text


CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def test_granular_category_scopes_filter_in_sql_full_pages_and_exact_totals(smart: Smart,
                                                                             data: dict[str, Any]) -> None:
    admin, a = data["admin"], data["a"]

    def obs(category: str) -> str:
        body = {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{a}"},
                "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
                "code": {"coding": [{"system": "http://example.org/codes", "code": "granular"}]}}
        r = smart.fhir("POST", "Observation", admin, content=orjson.dumps(body), headers=JSON)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    # Vital signs between the lab results: a post-filter would leave short pages and a total counting them.
    labs = [obs("laboratory") for _ in range(6)]
    vitals = [obs("vital-signs") for _ in range(9)]
    labs += [obs("laboratory") for _ in range(6)]
    token = _patient_token(smart, a, f"launch/patient patient/Observation.rs?category={CATEGORY}|laboratory")
    seen: list[str] = []
    pages: list[int] = []
    path: str | None = "Observation?code=http://example.org/codes|granular&_count=5&_total=accurate"
    while path:
        bundle = _get(smart, path, token)
        assert bundle["total"] == len(labs)
        pages.append(len(_ids(bundle)))
        seen += list(_ids(bundle))
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        path = nxt[0].split("/fhir/", 1)[1] if nxt else None
    assert sorted(seen) == sorted(labs) and not set(seen) & set(vitals)
    assert pages == [5, 5, 2]
    # Two scopes, two categories: either may be read.
    both = _patient_token(smart, a, f"launch/patient patient/Observation.rs?category={CATEGORY}|laboratory "
                                    f"patient/Observation.rs?category={CATEGORY}|vital-signs")
    bundle = _get(smart, "Observation?code=http://example.org/codes|granular&_total=accurate&_count=50", both)
    assert bundle["total"] == len(labs) + len(vitals)
    # A constraint that is no search parameter of the type matches nothing (fail closed).
    odd = _patient_token(smart, a, "launch/patient patient/Observation.rs?no-such-param=x")
    assert _get(smart, "Observation?_total=accurate", odd)["total"] == 0


def test_list_members_only_through_lists_the_token_may_read(smart: Smart, data: dict[str, Any]) -> None:
    admin, token, a, b = data["admin"], data["token"], data["a"], data["b"]

    def make_list(subject: str | None, members: list[str]) -> str:
        body: dict[str, Any] = {"resourceType": "List", "status": "current", "mode": "working",
                                "entry": [{"item": {"reference": m}} for m in members]}
        if subject:
            body["subject"] = {"reference": f"Patient/{subject}"}
        r = smart.fhir("POST", "List", admin, content=orjson.dumps(body), headers=JSON)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    # B's List names A's Observation and A: a patient-A token must not learn what B's List holds.
    list_b = make_list(b, [f"Observation/{data['a_source']}", f"Observation/{data['secret']}", f"Patient/{a}"])
    list_a = make_list(a, [f"Observation/{data['a_source']}", f"Observation/{data['obs_a'][0]}"])
    no_subject = make_list(None, [f"Observation/{data['a_source']}"])
    assert _ids(_get(smart, f"Observation?_list={list_b}", admin)) == {data["a_source"], data["secret"]}
    assert _ids(_get(smart, f"Patient?_list={list_b}", admin)) == {a}
    assert smart.fhir("GET", f"List/{list_b}", token).status_code in (403, 404)  # the token cannot read it
    assert _ids(_get(smart, f"Observation?_list={list_b}", token)) == set()
    assert _get(smart, f"Observation?_list={list_b}&_total=accurate", token)["total"] == 0
    assert _ids(_get(smart, f"Patient?_list={list_b}", token)) == set()
    assert _ids(_get(smart, f"Observation?_list={no_subject}", token)) == set()
    assert _ids(_get(smart, f"Observation?_list={list_a}", token)) == {data["a_source"], data["obs_a"][0]}
    assert _ids(_get(smart, f"Observation?_list={list_a},{list_b}", token)) == {data["a_source"],
                                                                                data["obs_a"][0]}
    # Deleted: its members no longer match, for anyone.
    assert smart.fhir("DELETE", f"List/{list_a}", admin).status_code in (200, 204)
    assert _ids(_get(smart, f"Observation?_list={list_a}", admin)) == set()
