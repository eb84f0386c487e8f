"""Result shaping: paging while writing, _sort, _total, _include/_revinclude, POST _search, unknown parameters,
conditional interactions with any criteria, the CapabilityStatement (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

from tests.conftest import LiveServer
from tests.integration.search_support import post


def matches(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def follow(api: LiveServer, url: str) -> dict[str, Any]:
    resp = api.http.get(url)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_paging_stays_correct_while_writing(api: LiveServer) -> None:
    for i in range(7):
        post(api, {"resourceType": "Patient", "name": [{"family": f"Page{i}"}], "birthDate": f"19{70 + i}"})
    first = follow(api, "Patient?name=page&_count=3&_sort=-birthdate")
    assert [e["resource"]["birthDate"] for e in first["entry"]] == ["1976", "1975", "1974"]
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert first["link"][0]["relation"] == "self"
    # writes between pages: a new first-sorted resource and an update of one already seen
    post(api, {"resourceType": "Patient", "name": [{"family": "Page9"}], "birthDate": "1999"})
    seen = first["entry"][0]["resource"]
    api.http.put(f"Patient/{seen['id']}", json={**seen, "gender": "other"})
    second = follow(api, nxt)
    assert [e["resource"]["birthDate"] for e in second["entry"]] == ["1973", "1972", "1971"]
    third = follow(api, next(link["url"] for link in second["link"] if link["relation"] == "next"))
    assert [e["resource"]["birthDate"] for e in third["entry"]] == ["1970"]
    assert not [link for link in third["link"] if link["relation"] == "next"]


def test_sort_several_keys_and_missing_values_last(api: LiveServer) -> None:
    a = post(api, {"resourceType": "Patient", "gender": "male", "name": [{"family": "B"}]})
    b = post(api, {"resourceType": "Patient", "gender": "female", "name": [{"family": "B"}]})
    c = post(api, {"resourceType": "Patient", "gender": "female", "name": [{"family": "A"}]})
    d = post(api, {"resourceType": "Patient", "name": [{"family": "C"}]})
    assert matches(follow(api, "Patient?_sort=gender,-family")) == [b, c, a, d]
    assert matches(follow(api, "Patient?_sort=-gender,family")) == [a, c, b, d]
    # the same order across pages of one
    ids, url = [], "Patient?_sort=gender,-family&_count=1"
    while url:
        page = follow(api, url)
        ids += matches(page)
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), "")
    assert ids == [b, c, a, d]
    resp = api.http.get("Patient?_sort=nonsense")
    assert resp.status_code == 400 and resp.json()["issue"][0]["expression"] == ["_sort"]


def test_count_and_total(api: LiveServer) -> None:
    for i in range(5):
        post(api, {"resourceType": "Patient", "gender": "male" if i % 2 else "female"})
    page = follow(api, "Patient?_count=2")
    assert len(matches(page)) == 2 and "total" not in page
    assert follow(api, "Patient?_count=2&_total=accurate")["total"] == 5
    assert follow(api, "Patient?gender=female&_total=estimate")["total"] >= 0
    assert follow(api, "Patient?gender=female")["total"] == 3  # all on the first page: free
    counted = follow(api, "Patient?_summary=count")
    assert counted["total"] == 5 and not counted["entry"]
    zero = follow(api, "Patient?_count=0")  # R4: _count=0 is _summary=count
    assert matches(zero) == [] and zero["total"] == 5
    assert follow(api, "Patient?gender=male&_count=0")["total"] == 2
    capped = api.http.get("Patient?_count=100000").json()
    assert len(matches(capped)) == 5  # capped, not refused
    self_link = next(link["url"] for link in capped["link"] if link["relation"] == "self")
    assert "_count=1000" in self_link  # the page size actually used
    defaulted = api.http.get("Patient?gender=male").json()
    assert "_count=20" in next(link["url"] for link in defaulted["link"] if link["relation"] == "self")
    assert api.http.get("Patient?_count=abc").status_code == 400
    assert api.http.get("Patient?_total=maybe").status_code == 400


def test_include_and_revinclude(api: LiveServer) -> None:
    org = post(api, {"resourceType": "Organization", "name": "Hospital"})
    pat = post(api, {"resourceType": "Patient", "managingOrganization": {"reference": f"Organization/{org}"}})
    enc = post(api, {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                     "subject": {"reference": f"Patient/{pat}"}})
    obs = post(api, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                     "subject": {"reference": f"Patient/{pat}"}, "encounter": {"reference": f"Encounter/{enc}"}})
    b = follow(api, f"Observation?_id={obs}&_include=Observation:subject")
    assert matches(b) == [obs] and matches(b, "include") == [pat]
    b = follow(api, f"Observation?_id={obs}&_include=Observation:subject:Group")
    assert matches(b, "include") == []
    b = follow(api, f"Observation?_id={obs}&_include=*")
    assert set(matches(b, "include")) == {pat, enc}
    b = follow(api, f"Observation?_id={obs}&_include=Observation:subject&_include:iterate=Patient:organization")
    assert set(matches(b, "include")) == {pat, org}
    b = follow(api, f"Patient?_id={pat}&_revinclude=Observation:subject&_revinclude=Encounter:subject")
    assert matches(b) == [pat] and set(matches(b, "include")) == {obs, enc}
    b = follow(api, f"Encounter?_id={enc}&_revinclude=Observation:encounter&_include=Encounter:subject")
    assert set(matches(b, "include")) == {obs, pat}
    assert api.http.get("Observation?_include=Observation:nope").status_code == 400


def test_post_search_with_form_body(api: LiveServer) -> None:
    a = post(api, {"resourceType": "Patient", "name": [{"family": "Formbody"}]})
    post(api, {"resourceType": "Patient", "name": [{"family": "Other"}]})
    resp = api.http.post("Patient/_search", content="name=formb&_count=5",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 200 and matches(resp.json()) == [a]


def test_unknown_parameters_ignored_or_strict(api: LiveServer) -> None:
    a = post(api, {"resourceType": "Patient", "gender": "male"})
    b = api.http.get("Patient?gender=male&foo=bar").json()
    assert matches(b) == [a]
    outcome = [e for e in b["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and outcome[0]["resource"]["issue"][0]["expression"] == ["foo"]
    assert "foo" not in b["link"][0]["url"] and "gender=male" in b["link"][0]["url"]  # self: what was used
    strict = api.http.get("Patient?gender=male&foo=bar", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and strict.json()["issue"][0]["expression"] == ["foo"]


def test_conditional_interactions_accept_any_criteria(api: LiveServer) -> None:
    body = {"resourceType": "Patient", "name": [{"family": "Condo"}], "birthDate": "1990-02-03"}
    first = api.http.post("Patient", json=body, headers={"If-None-Exist": "family=condo&birthdate=1990-02-03"})
    again = api.http.post("Patient", json=body, headers={"If-None-Exist": "family=condo&birthdate=1990-02-03"})
    assert first.status_code == 201 and again.status_code == 200
    upd = api.http.put("Patient?family:exact=Condo", json={**body, "gender": "female"})
    assert upd.status_code == 200 and upd.json()["gender"] == "female"
    assert api.http.delete("Patient?gender=female&birthdate=1990").status_code in (200, 204)
    assert matches(follow(api, "Patient?family=condo")) == []
    unknown = api.http.delete("Patient?nonsense=1")  # never ignore a criterion and delete more
    assert unknown.status_code == 400


def test_capability_statement_lists_supported_parameters(api: LiveServer) -> None:
    cs = follow(api, "metadata")
    patient = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    names = {p["name"] for p in patient["searchParam"]}
    assert {"_id", "_lastUpdated", "name", "birthdate", "identifier", "general-practitioner", "_tag"} <= names
    assert {"_text", "_content", "_list"} <= names  # full text and _list (search/fulltext, sql/special.py)


def test_summary_and_elements(api: LiveServer) -> None:
    post(api, {"resourceType": "Patient", "name": [{"family": "Sum"}], "gender": "male",
               "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Sum</div>"},
               "maritalStatus": {"text": "married"}, "deceasedBoolean": False})
    full = follow(api, "Patient?name=sum")["entry"][0]["resource"]
    assert "maritalStatus" in full and "text" in full
    summary = follow(api, "Patient?name=sum&_summary=true")["entry"][0]["resource"]
    assert "maritalStatus" not in summary and "text" not in summary
    assert summary["name"] and summary["gender"] == "male" and summary["deceasedBoolean"] is False
    assert any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])
    data = follow(api, "Patient?name=sum&_summary=data")["entry"][0]["resource"]
    assert "text" not in data and "maritalStatus" in data
    text = follow(api, "Patient?name=sum&_summary=text")["entry"][0]["resource"]
    assert set(text) == {"resourceType", "id", "meta", "text"}
    elements = follow(api, "Patient?name=sum&_elements=gender,deceased")["entry"][0]["resource"]
    assert set(elements) == {"resourceType", "id", "meta", "gender", "deceasedBoolean"}
    assert api.http.get("Patient?_summary=maybe").status_code == 400
