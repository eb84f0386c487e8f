"""The Elasticsearch full-text backend (FHIR_ELASTICSEARCH_URL), end to end through the HTTP server, on
SQLite and PostgreSQL. No Elasticsearch exists here: it talks to ``fake_elasticsearch``, a real HTTP server
on loopback implementing only the endpoints the backend uses (see that module for its limits)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select

from fhir_server.app import create_app
from fhir_server.rest.server import FhirServer
from fhir_server.search.fulltext.elasticsearch import TOPIC, ElasticsearchIndex
from fhir_server.search.fulltext.tables import SEARCH_TEXT
from tests.conftest import Backend, _free_port, uvicorn_config, wait_until
from tests.integration.fake_elasticsearch import FakeElasticsearch

INDEX = "fhir-test"


def narrated(text: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "note"},
            "text": {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{text}</div>'}}


class EsServer:
    def __init__(self, backend: Backend, es: FakeElasticsearch) -> None:
        backend.truncate()
        self.backend = backend
        self.es = es
        self.settings = backend.settings.model_copy(update={
            "elasticsearch_url": es.url, "elasticsearch_index": INDEX, "outbox_dispatcher": True,
            "outbox_poll_seconds": 0.05})
        self.fhir = FhirServer(self.settings, backend.engine)
        port = _free_port()
        self.server = uvicorn.Server(uvicorn_config(create_app(self.settings, self.fhir), host="127.0.0.1",
                                                    port=port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 20, "uvicorn to start")
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}/fhir/", timeout=30)

    def close(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.backend.truncate()

    def ids(self, query: str) -> set[str]:
        resp = self.http.get(query)
        assert resp.status_code == 200, resp.text
        return {e["resource"]["id"] for e in resp.json().get("entry", []) if e["search"]["mode"] == "match"}

    def doc(self, rid: str, rtype: str = "Observation") -> tuple[int, dict[str, Any]] | None:
        return self.es.docs(INDEX).get(f"{rtype}.{rid}")


@pytest.fixture
def es_server(backend: Backend) -> Iterator[EsServer]:
    with FakeElasticsearch() as es:
        server = EsServer(backend, es)
        try:
            yield server
        finally:
            server.close()


def test_written_versions_reach_elasticsearch_and_answer_text_search(es_server: EsServer) -> None:
    s = es_server
    rid = s.http.post("Observation", json=narrated("<p>High <b>blood sugar</b> after lunch</p>")).json()["id"]
    other = s.http.post("Observation", json=narrated("<p>Sugar in the blood</p>")).json()["id"]
    wait_until(lambda: s.doc(rid) is not None and s.doc(other) is not None, 10, "documents delivered")
    version, doc = s.doc(rid)  # type: ignore[misc]
    assert version == 1 and doc["narrative"] == "high blood sugar after lunch" and doc["resource_type"] == "Observation"
    assert s.ids("Observation?_text=blood") == {rid, other}
    assert s.ids('Observation?_text="blood sugar"') == {rid}
    assert s.ids("Observation?_text=lunch OR nothing") == {rid}
    assert s.ids("Observation?_content=note&_text=lunch") == {rid}
    assert s.ids("Patient?_text=blood") == set()  # filtered by type in Elasticsearch

    resp = s.http.put(f"Observation/{rid}", json={**narrated("<p>Ketones present</p>"), "id": rid})
    assert resp.status_code == 200
    wait_until(lambda: (s.doc(rid) or (0, {}))[0] == 2, 10, "version 2 delivered")
    assert s.ids("Observation?_text=ketones") == {rid}
    assert s.ids("Observation?_text=lunch") == set()
    assert s.http.delete(f"Observation/{rid}").status_code in (200, 204)
    wait_until(lambda: s.doc(rid) is None, 10, "deletion delivered")
    assert s.ids("Observation?_text=ketones") == set()

    with s.backend.engine.connect() as conn:  # the database full-text table is not used alongside
        assert conn.execute(select(func.count()).select_from(SEARCH_TEXT)).scalar_one() == 0
    put = [path for method, path in s.es.requests if method == "PUT" and "/_doc/" in path]
    assert put and all("version_type=external_gte" in p for p in put)


def test_late_delivery_never_overwrites_and_reindex_resends(es_server: EsServer) -> None:
    s = es_server
    rid = s.http.post("Observation", json=narrated("<p>first words</p>")).json()["id"]
    s.http.put(f"Observation/{rid}", json={**narrated("<p>second words</p>"), "id": rid})
    wait_until(lambda: (s.doc(rid) or (0, {}))[0] == 2, 10, "version 2 delivered")
    index = ElasticsearchIndex(s.settings)
    stale = {"resource_type": "Observation", "resource_id": rid, "version": 1,
             "doc": {"resource_type": "Observation", "resource_id": rid, "narrative": "first words", "content": ""}}
    index.outbox_handlers()[TOPIC](f"Observation/{rid}/_history/1", stale)  # a repeated old delivery: 409, fine
    assert s.doc(rid) == (2, s.doc(rid)[1]) and s.doc(rid)[1]["narrative"] == "second words"  # type: ignore[index]

    s.es.indices[INDEX].clear()  # Elasticsearch lost its index
    assert s.ids("Observation?_text=second") == set()
    resp = s.http.post("Observation/$reindex", json={"resourceType": "Parameters"})
    assert resp.status_code == 200, resp.text
    wait_until(lambda: s.doc(rid) is not None, 10, "reindexed document delivered")
    assert s.ids("Observation?_text=second") == {rid}


def test_elasticsearch_down_is_a_503_outcome(es_server: EsServer) -> None:
    es_server.es.stop()
    resp = es_server.http.get("Observation?_text=anything")
    assert resp.status_code == 503
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert "full-text" in resp.json()["issue"][0]["diagnostics"]
