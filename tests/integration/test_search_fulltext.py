"""_text (narrative) and _content (whole resource) full-text search, and _list, on SQLite (FTS5) and
PostgreSQL (tsvector), through the HTTP server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.integration.search_support import ids, post


def narrated(text: str, **more: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "note"},
            "text": {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{text}</div>'},
            **more}


@pytest.fixture
def notes(api: LiveServer) -> dict[str, str]:
    return {
        "sugar": post(api, narrated("<p>High <b>blood sugar</b> after lunch</p>")),
        "sugar2": post(api, narrated("<p>Sugar in the blood is normal</p>")),
        "fever": post(api, narrated("<p>Fièvre légère, no cough</p>",
                                    valueString="febrile, see pediatrician")),
        "none": post(api, {"resourceType": "Observation", "status": "final", "code": {"text": "blood pressure"}}),
    }


def test_text_words_or_phrase(api: LiveServer, notes: dict[str, str]) -> None:
    assert ids(api, "Observation?_text=blood") == {notes["sugar"], notes["sugar2"]}
    assert ids(api, "Observation?_text=BLOOD sugar") == {notes["sugar"], notes["sugar2"]}  # words ANDed
    assert ids(api, 'Observation?_text="blood sugar"') == {notes["sugar"]}  # a phrase: in order
    assert ids(api, "Observation?_text=lunch OR cough") == {notes["sugar"], notes["fever"]}
    assert ids(api, "Observation?_text=lunch,cough") == {notes["sugar"], notes["fever"]}  # comma = OR
    assert ids(api, "Observation?_text=fievre") == {notes["fever"]}  # accents folded
    assert ids(api, "Observation?_text=blood&_text=lunch") == {notes["sugar"]}  # repeated = AND
    assert ids(api, "Observation?_text=pressure") == set()  # the code text is no narrative
    assert ids(api, "Observation?_text=blo") == set()  # words, not prefixes
    assert ids(api, "Patient?_text=blood") == set()


def test_content_is_the_whole_resource(api: LiveServer, notes: dict[str, str]) -> None:
    assert ids(api, "Observation?_content=pressure") == {notes["none"]}
    assert ids(api, "Observation?_content=pediatrician") == {notes["fever"]}
    assert ids(api, "Observation?_content=blood") == {notes["sugar"], notes["sugar2"], notes["none"]}
    assert ids(api, "Observation?_content=blood&code:text=blood") == {notes["none"]}  # with other criteria
    total = api.http.get("Observation?_content=blood&_total=accurate").json()["total"]
    assert total == 3


def test_index_follows_updates_and_deletes(api: LiveServer, notes: dict[str, str]) -> None:
    sid = notes["sugar"]
    resp = api.http.put(f"Observation/{sid}", json={**narrated("<p>Ketones present</p>"), "id": sid})
    assert resp.status_code == 200, resp.text
    assert ids(api, "Observation?_text=lunch") == set()
    assert ids(api, "Observation?_text=ketones") == {sid}
    assert api.http.delete(f"Observation/{sid}").status_code in (200, 204)
    assert ids(api, "Observation?_text=ketones") == set()


def test_transaction_entries_are_indexed_with_the_bundle(api: LiveServer) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": narrated(f"<p>entry number{i} common</p>"), "request": {"method": "POST", "url": "Observation"}}
        for i in range(5)]}
    resp = api.http.post("", json=bundle)
    assert resp.status_code == 200, resp.text
    assert len(ids(api, "Observation?_text=common")) == 5
    assert len(ids(api, "Observation?_text=number3")) == 1


def test_modifiers_and_bad_syntax_are_rejected(api: LiveServer, notes: dict[str, str]) -> None:
    for query, name in (("Observation?_text:exact=blood", "_text:exact"),
                        ("Observation?_content:contains=blo", "_content:contains"),
                        ('Observation?_text="blood', "_text"), ("Observation?_text=OR", "_text")):
        resp = api.http.get(query)
        assert resp.status_code == 400, (query, resp.text)
        assert resp.json()["resourceType"] == "OperationOutcome"
        assert resp.json()["issue"][0]["expression"] == [name]


def test_list(api: LiveServer) -> None:
    a = post(api, {"resourceType": "Patient", "name": [{"family": "A"}]})
    b = post(api, {"resourceType": "Patient", "name": [{"family": "B"}]})
    post(api, {"resourceType": "Patient", "name": [{"family": "C"}]})
    allergy = post(api, {"resourceType": "AllergyIntolerance", "patient": {"reference": f"Patient/{a}"}})
    lst = post(api, {"resourceType": "List", "status": "current", "mode": "working", "entry": [
        {"item": {"reference": f"Patient/{a}"}}, {"item": {"reference": f"Patient/{b}"}},
        {"item": {"reference": f"AllergyIntolerance/{allergy}"}}]})
    other = post(api, {"resourceType": "List", "status": "current", "mode": "working",
                       "entry": [{"item": {"reference": f"Patient/{b}"}}]})
    assert ids(api, f"Patient?_list={lst}") == {a, b}
    assert ids(api, f"AllergyIntolerance?_list={lst}") == {allergy}
    assert ids(api, f"Patient?_list={lst}&name=b") == {b}
    assert ids(api, f"Patient?_list={other},{lst}") == {a, b}
    assert ids(api, "Patient?_list=nosuchlist") == set()
    assert api.http.delete(f"List/{other}").status_code in (200, 204)
    assert ids(api, f"Patient?_list={other}") == set()
    resp = api.http.get("Patient?_list=$current-allergies")
    assert resp.status_code == 400 and resp.json()["issue"][0]["expression"] == ["_list"]


def test_special_parameters_do_not_sort(api: LiveServer) -> None:
    for code in ("_text", "_content", "_list"):
        resp = api.http.get(f"Observation?_sort={code}")
        assert resp.status_code == 400, resp.text
        assert resp.json()["issue"][0]["expression"] == ["_sort"]
