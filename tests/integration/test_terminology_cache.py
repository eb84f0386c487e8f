"""The $validate-code fast path (terminology/cache.py) on both databases: repeated questions are answered from
the cache, and a CodeSystem or ValueSet written by another server process (here: a second FhirServer with its
own engine and cache, on the same database) is seen by the next request, not served stale."""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.storage.database import make_engine
from terminology import valueset
from terminology.cache import cache_for
from tests.conftest import SYSTEM
from tests.integration.test_terminology_operations import POLYGONS, SHAPES, fixture, params, tx

__all__ = ["tx"]


@pytest.fixture
def other(tx) -> Iterator[FhirServer]:  # type: ignore[no-untyped-def]
    """Another server process's core: its own engine (connection pool) and its own terminology cache."""
    engine = make_engine(tx.backend.settings)
    try:
        yield FhirServer(tx.backend.settings, engine)
    finally:
        engine.dispose()


def valid(api, code: str) -> bool:  # type: ignore[no-untyped-def]
    r = api.http.get("ValueSet/$validate-code", params={"url": POLYGONS, "system": SHAPES, "code": code})
    assert r.status_code == 200, r.text
    return bool(params(r.json())["result"][0]["valueBoolean"])


def put(server: FhirServer, resource: dict[str, Any]) -> None:
    r = server.handle(FhirRequest("PUT", f"{resource['resourceType']}/{resource['id']}", resource=resource,
                                  headers={"content-type": "application/fhir+json"}, access=SYSTEM))
    assert r.status in (200, 201), r.resource


def test_repeated_questions_are_answered_from_the_cache(tx) -> None:  # type: ignore[no-untyped-def]
    assert valid(tx, "square") and not valid(tx, "circle")
    cache = cache_for(tx.backend.engine)
    assert cache is not None
    hits = cache.hits
    for _ in range(3):
        assert valid(tx, "square") and not valid(tx, "circle")
    assert cache.hits == hits + 6


def test_a_code_system_changed_by_another_process_is_seen_at_once(tx, other: FhirServer) -> None:  # type: ignore[no-untyped-def]
    assert not valid(tx, "hexagon")
    shapes = copy.deepcopy(fixture("shapes.json"))
    polygon = shapes["concept"][0]["concept"][0]
    assert polygon["code"] == "polygon"
    polygon["concept"].append({"code": "hexagon", "display": "Hexagon"})
    put(other, shapes)
    assert valid(tx, "hexagon")


def test_a_value_set_changed_by_another_process_is_seen_at_once(tx, other: FhirServer) -> None:  # type: ignore[no-untyped-def]
    assert valid(tx, "square")
    polygons = copy.deepcopy(fixture("shapes-polygons.json"))
    polygons["compose"]["exclude"][0]["concept"].append({"code": "square"})
    put(other, polygons)
    assert not valid(tx, "square") and valid(tx, "triangle")


def test_a_rolled_back_change_leaves_the_cache_valid(tx, other: FhirServer) -> None:  # type: ignore[no-untyped-def]
    assert valid(tx, "triangle") and not valid(tx, "circle")
    cache = cache_for(tx.backend.engine)
    assert cache is not None
    bad = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": fixture("shapes-polygons.json") | {"compose": {"include": [{"system": SHAPES}]}},
         "request": {"method": "PUT", "url": "ValueSet/polygons"}},
        {"resource": {"resourceType": "Patient", "birthDate": "not a date"},
         "request": {"method": "POST", "url": "Patient"}}]}
    r = other.handle(FhirRequest("POST", "", resource=bad, headers={"content-type": "application/fhir+json"},
                                 access=SYSTEM))
    assert r.status >= 400
    hits = cache.hits
    assert valid(tx, "triangle") and not valid(tx, "circle")
    assert cache.hits == hits + 2


def test_a_post_of_a_read_only_operation_takes_no_write_lock(tx) -> None:  # type: ignore[no-untyped-def]
    """POST $validate-code runs in a read-only unit of work: on SQLite it is answered while another
    connection holds the database's write lock (a write transaction would wait for it)."""
    body = {"resourceType": "Parameters", "parameter": [{"name": "url", "valueUri": POLYGONS},
                                                        {"name": "system", "valueUri": SHAPES},
                                                        {"name": "code", "valueCode": "triangle"}]}
    path = tx.backend.settings.sqlite_path()
    lock = sqlite3.connect(path, isolation_level=None) if path is not None else None
    try:
        if lock is not None:
            lock.execute("BEGIN IMMEDIATE")
        r = tx.http.post("ValueSet/$validate-code", json=body, timeout=5)
        assert r.status_code == 200, r.text
        assert params(r.json())["result"][0]["valueBoolean"] is True
    finally:
        if lock is not None:
            lock.rollback()
            lock.close()


def test_a_value_set_too_big_to_hold_whole_is_answered_code_by_code(tx, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(valueset, "WHOLE_LIMIT", 3)  # the shapes system has more concepts than that
    put(tx.fhir, copy.deepcopy(fixture("shapes.json")))  # a new generation: nothing cached from earlier tests
    assert valid(tx, "triangle")
    cache = cache_for(tx.backend.engine)  # made by the first $validate-code on this database
    assert cache is not None
    answers = [valid(tx, code) for code in ("square", "rectangle", "circle", "square")]
    assert answers == [True, False, False, True]  # rectangle: excluded; circle: not a polygon
    assert any(key[2:] == (SHAPES, "square") for key in cache._members)  # asked code by code, and kept


def test_validate_code_survives_connections_dropped_by_the_server(tx) -> None:  # type: ignore[no-untyped-def]
    """The generation token is the first statement of a cached $validate-code and is read through the
    driver's cursor: a dropped pooled connection must still be replaced (the unit of work retries)."""
    if tx.backend.name != "postgresql":
        return
    assert valid(tx, "square")
    with tx.backend.engine.connect() as conn:  # terminate every other session of this database
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    for _ in range(25):  # more than the pool holds: every pooled connection was dropped
        assert valid(tx, "square")
