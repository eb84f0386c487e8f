"""Chained searches walk the chain's candidates in id order (search/sql.driver): pages, cursors, totals,
other criteria, deleted resources and several targets must give exactly what the plain predicate gives.
Through the HTTP server, on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.conftest import LiveServer
from tests.integration.search_support import post


def walk(api: LiveServer, query: str) -> tuple[list[str], list[int], int]:
    """Every page of ``query``: ids in order, page sizes, and the accurate total of the first page."""
    seen: list[str] = []
    sizes: list[int] = []
    total = -1
    path: str | None = query + "&_total=accurate"
    while path:
        resp = api.http.get(path)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        total = body["total"] if total < 0 else total
        page = [e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"]
        seen += page
        sizes.append(len(page))
        nxt = [link["url"] for link in body["link"] if link["relation"] == "next"]
        path = nxt[0].split("/fhir/", 1)[1] if nxt else None
    return seen, sizes, total


def test_chained_pages_match_the_plain_predicate(api: LiveServer) -> None:
    kumar = [post(api, {"resourceType": "Patient", "name": [{"family": "Kumar", "given": [f"K{i}"]}]})
             for i in range(3)]
    other = post(api, {"resourceType": "Patient", "name": [{"family": "Mehta"}]})
    group = post(api, {"resourceType": "Group", "type": "person", "actual": True, "name": "Kumar family"})

    def obs(subject: str, code: str) -> str:
        return post(api, {"resourceType": "Observation", "status": "final", "subject": {"reference": subject},
                          "code": {"coding": [{"system": "urn:c", "code": code}]}})

    mine: dict[str, str] = {}  # id -> code, of the Observations of the Kumars
    for n in range(14):
        for k in kumar:
            code = "a" if n % 2 else "b"
            mine[obs(f"Patient/{k}", code)] = code
        obs(f"Patient/{other}", "a")  # interleaved non-matches
        obs(f"Group/{group}", "a")  # same subject param, a target type without the chained parameter
    gone = sorted(mine)[::7]
    for oid in gone:
        assert api.http.delete(f"Observation/{oid}").status_code in (200, 204)
        del mine[oid]

    seen, sizes, total = walk(api, "Observation?subject:Patient.name=kumar&_count=5")
    assert seen == sorted(mine)  # id order, no duplicates, deleted ones left out, nothing else
    assert total == len(mine) and sizes == [5] * (len(mine) // 5) + ([len(mine) % 5] if len(mine) % 5 else [])
    a_only = sorted(i for i, c in mine.items() if c == "a")
    seen, _sizes, total = walk(api, "Observation?subject:Patient.name=kumar&code=urn:c|a&_count=4")
    assert seen == a_only and total == len(a_only)
    seen, _sizes, _total = walk(api, "Observation?code=urn:c|a&subject:Patient.name=kumar&_count=4")
    assert seen == a_only  # the chain is not the first criterion
    # Without a type the chain follows every target type of subject that has a name (Group has none).
    seen, _sizes, _total = walk(api, "Observation?subject.name=kumar&_count=10")
    assert seen == sorted(mine)
    # Sorted searches keep the plain plan and still agree.
    seen, _sizes, _total = walk(api, "Observation?subject:Patient.name=kumar&_sort=_id&_count=6")
    assert seen == sorted(mine)
    assert walk(api, "Observation?subject:Patient.name=nobody&_count=5")[0] == []
