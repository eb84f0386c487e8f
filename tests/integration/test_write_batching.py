"""What a unit of work saves without changing any answer (issue 18 item 10), on both databases: a current version
it wrote or read is not read again, a lock it holds is not taken again, and a version replaced in the same
transaction leaves exactly the last version's rows and index."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, select

from fhir_server.search.tables import STRING
from fhir_server.storage.models import RESOURCE, RESOURCE_HISTORY
from fhir_server.storage.repository import Repository
from tests.conftest import SYSTEM, LiveServer


def _patient(family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family}]}


@contextmanager
def _statements(api: LiveServer) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(api.backend.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(api.backend.engine, "before_cursor_execute", count)


def test_versions_written_or_read_in_the_transaction_are_not_read_again(api: LiveServer) -> None:
    rid = api.http.post("Patient", json=_patient("Stored")).json()["id"]

    def work(repo: Repository) -> tuple[Any, ...]:
        made = repo.create("Patient", _patient("Made"))
        with _statements(api) as seen:
            again = repo.current("Patient", made.id, for_update=True)  # ours: locked already, no statement
        assert seen == [] and again is not None and again.version_id == 1
        assert again.content is not None
        again.content["name"] = [{"family": "Mutated by the caller"}]  # must not leak into the next answer
        first = repo.current("Patient", rid)
        with _statements(api) as seen:
            plain = repo.current("Patient", rid)  # read plainly before: no statement
        assert seen == []
        with _statements(api) as seen:
            locked = repo.current("Patient", rid, for_update=True)  # not locked yet: the database locks it
        assert len(seen) == 1  # (SQLite has no FOR UPDATE: its writer holds the database lock)
        assert "FOR UPDATE" in seen[0] or repo.dialect == "sqlite"
        updated, _ = repo.update("Patient", made.id, {**_patient("Changed"), "id": made.id})
        after = repo.current("Patient", made.id)
        return first, plain, locked, updated, after, repo.current("Patient", made.id)

    first, plain, locked, updated, after, last = api.fhir.uow.run(work, write=True, access=SYSTEM)
    assert first == plain == locked and first.content["name"] == [{"family": "Stored"}]
    assert updated.version_id == after.version_id == 2 and after.content["name"] == [{"family": "Changed"}]
    assert last.content == after.content and last.content is not after.content  # a fresh copy each time
    stored = api.http.get(f"Patient/{updated.id}").json()
    assert stored["meta"]["versionId"] == "2" and stored["name"] == [{"family": "Changed"}]


def test_a_lock_held_is_not_taken_again(api: LiveServer) -> None:
    def work(repo: Repository) -> int:
        with _statements(api) as seen:
            repo.lock("test-batching|one")
            repo.lock("test-batching|one")
            repo.lock("test-batching|two")
        return len(seen)

    taken = api.fhir.uow.run(work, write=True, access=SYSTEM)
    assert taken == (2 if api.backend.engine.dialect.name == "postgresql" else 0)


def test_created_then_updated_twice_in_one_transaction_keeps_the_last_version_only(api: LiveServer) -> None:
    def work(repo: Repository) -> str:
        made = repo.create("Patient", _patient("One"))
        repo.update("Patient", made.id, {**_patient("Two"), "id": made.id})
        repo.update("Patient", made.id, {**_patient("Three"), "id": made.id})
        return made.id

    rid = api.fhir.uow.run(work, write=True, access=SYSTEM)
    with api.backend.engine.connect() as conn:
        current = conn.execute(select(RESOURCE.c.version_id, RESOURCE.c.content).where(
            RESOURCE.c.resource_type == "Patient", RESOURCE.c.id == rid)).all()
        history = conn.execute(select(RESOURCE_HISTORY.c.version_id).where(
            RESOURCE_HISTORY.c.resource_type == "Patient", RESOURCE_HISTORY.c.id == rid)
            .order_by(RESOURCE_HISTORY.c.version_id)).scalars().all()
        names = conn.execute(select(STRING.c.value_norm).where(
            STRING.c.resource_type == "Patient", STRING.c.resource_id == rid, STRING.c.param == "family")).scalars()
        assert sorted(names) == ["three"]
    assert [(v, c["name"][0]["family"], c["meta"]["versionId"]) for v, c in current] == [(3, "Three", "3")]
    assert history == [1, 2, 3]
    assert api.http.get(f"Patient/{rid}/_history/2").json()["name"] == [{"family": "Two"}]
    assert api.http.get("Patient", params={"family": "Two", "_id": rid}).json()["total"] == 0
    assert api.http.get("Patient", params={"family": "Three", "_id": rid}).json()["total"] == 1


def test_an_update_of_an_earlier_version_is_searchable_in_the_same_transaction(api: LiveServer) -> None:
    rid = api.http.post("Patient", json=_patient("Before")).json()["id"]

    def work(repo: Repository) -> tuple[list[str], list[str], dict[str, Any] | None]:
        repo.update("Patient", rid, {**_patient("Afterwards"), "id": rid})  # queued: UPDATE, old rows' deletion
        old = repo.find_ids("Patient", [("family", "Before"), ("_id", rid)])
        new = repo.find_ids("Patient", [("family", "Afterwards"), ("_id", rid)])
        row = repo.conn.execute(select(RESOURCE.c.content).where(RESOURCE.c.resource_type == "Patient",
                                                                 RESOURCE.c.id == rid)).scalar_one()
        return old, new, row

    old, new, row = api.fhir.uow.run(work, write=True, access=SYSTEM)
    assert old == [] and new == [rid]
    assert row is not None and row["meta"]["versionId"] == "2"  # the flush sent the UPDATE before the search


def test_a_big_flush_copies_its_rows_after_the_queued_deletions_and_updates(api: LiveServer,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from fhir_server.storage import bulk

    monkeypatch.setattr(bulk, "COPY_ABOVE", 3)  # PostgreSQL: this flush's inserts go by COPY
    rid = api.http.post("Patient", json=_patient("Copied")).json()["id"]

    def work(repo: Repository) -> list[str]:
        repo.update("Patient", rid, {**_patient("Recopied"), "id": rid})
        made = [repo.create("Patient", _patient(f"Bulk{i}")).id for i in range(4)]
        repo.flush()
        return made

    made = api.fhir.uow.run(work, write=True, access=SYSTEM)
    assert api.http.get("Patient", params={"family": "Copied", "_id": rid}).json()["total"] == 0
    assert api.http.get("Patient", params={"family": "Recopied", "_id": rid}).json()["total"] == 1
    assert api.http.get(f"Patient/{rid}").json()["meta"]["versionId"] == "2"
    assert api.http.get("Patient", params={"_id": ",".join(made)}).json()["total"] == 4


def test_a_quantity_beyond_a_float_in_canonical_units_is_stored_and_found(api: LiveServer) -> None:
    """1e308 km is +inf metres in the index's float: JSON has no infinity (the PostgreSQL flush sends rows as
    JSON), so it must still arrive as one, not as a null the column refuses (a 500)."""
    huge = {"resourceType": "Observation", "status": "final", "code": {"text": "distance"},
            "valueQuantity": {"value": 1e308, "unit": "km", "system": "http://unitsofmeasure.org", "code": "km"}}
    created = api.http.post("Observation", json=huge)
    assert created.status_code == 201, created.text
    found = api.http.get("Observation", params={"value-quantity": "gt1|http://unitsofmeasure.org|m"}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [created.json()["id"]]
