"""Full text in Elasticsearch (``FHIR_ELASTICSEARCH_URL``), through its REST API with httpx.

Writes: a BEFORE_COMMIT hook puts one outbox row per version in the write's own transaction (the folded
words, as ``documents.py`` makes them), so a document exists in Elasticsearch only for committed versions and
is delivered at least once; the dispatcher PUTs or DELETEs ``_doc/{Type}.{id}`` with the resource version
as an external version (``external_gte``), so a late or repeated delivery never overwrites a newer one.
Queries: ``_search`` with a bool of ``match`` (all words) and ``match_phrase`` clauses; the ids it answers
go into the normal SQL search as ``id IN (...)``. Search is eventually consistent here (after delivery).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from sqlalchemy import ColumnElement, FromClause

from fhir_server.errors import EXCEPTION, TOO_COSTLY, FhirError
from fhir_server.hooks import HookPoint, Hooks, WriteEvent
from fhir_server.search.fulltext.documents import content, narrative
from fhir_server.search.fulltext.syntax import Term, TextQuery

if TYPE_CHECKING:
    from fhir_server.config import Settings
    from fhir_server.storage.repository import Repository

log = logging.getLogger(__name__)

TOPIC = "search-elasticsearch"
MAX_HITS = 10_000  # Elasticsearch's default index.max_result_window
MAPPINGS = {"properties": {"resource_type": {"type": "keyword"}, "resource_id": {"type": "keyword"},
                           "narrative": {"type": "text"}, "content": {"type": "text"}}}


def es_query(resource_type: str, field: str, queries: list[TextQuery]) -> dict[str, Any]:
    def clause(t: Term) -> dict[str, Any]:
        text = " ".join(t.words)
        return {"match_phrase": {field: text}} if t.phrase else {"match": {field: {"query": text}}}

    alternatives = [{"bool": {"must": [clause(t) for t in group]}} for q in queries for group in q.any_of]
    return {"bool": {"filter": [{"term": {"resource_type": resource_type}}],
                     "must": [{"bool": {"should": alternatives, "minimum_should_match": 1}}]}}


class ElasticsearchIndex:
    def __init__(self, settings: Settings, client: httpx.Client | None = None) -> None:
        assert settings.elasticsearch_url
        self.base = settings.elasticsearch_url.rstrip("/") + "/" + quote(settings.elasticsearch_index, safe="")
        self.client = client or httpx.Client(timeout=10.0)
        self._index_ready = False

    def register(self, hooks: Hooks) -> None:
        hooks.register(HookPoint.BEFORE_COMMIT, self.on_write)

    def outbox_handlers(self) -> dict[str, Any]:
        return {TOPIC: self.deliver}

    def on_write(self, event: WriteEvent, repo: Repository | None) -> None:
        if repo is None or event.resource_id is None or event.version is None:
            return
        self._enqueue(repo, event.resource_type, event.resource_id, event.version.version_id, event.resource)

    def reindex(self, repo: Repository, resource_type: str, items: list[tuple[str, dict[str, Any] | None]]) -> None:
        for rid, resource in items:
            if resource is not None:  # a deleted one was deleted in Elasticsearch when it was deleted here
                version = int((resource.get("meta") or {}).get("versionId") or 1)
                self._enqueue(repo, resource_type, rid, version, resource)

    def _enqueue(self, repo: Repository, rtype: str, rid: str, version: int,
                 resource: dict[str, Any] | None) -> None:
        payload: dict[str, Any] = {"resource_type": rtype, "resource_id": rid, "version": version}
        if resource is not None:
            payload["doc"] = {"resource_type": rtype, "resource_id": rid, "narrative": narrative(resource),
                              "content": content(resource)}
        repo.enqueue(TOPIC, f"{rtype}/{rid}/_history/{version}", payload)

    def _ensure_index(self) -> None:
        if self._index_ready:
            return
        resp = self.client.put(self.base, json={"mappings": MAPPINGS})
        if resp.status_code != 200 and "resource_already_exists" not in resp.text:
            raise RuntimeError(f"Elasticsearch: creating the index failed ({resp.status_code})")
        self._index_ready = True

    def deliver(self, key: str, payload: dict[str, Any]) -> None:
        """Outbox handler (idempotent: external versions). Raises to have the dispatcher retry."""
        self._ensure_index()
        url = f"{self.base}/_doc/{quote(payload['resource_type'] + '.' + payload['resource_id'], safe='')}"
        params = {"version": str(payload["version"]), "version_type": "external_gte", "refresh": "wait_for"}
        doc = payload.get("doc")
        resp = self.client.put(url, params=params, json=doc) if doc is not None else \
            self.client.delete(url, params=params)
        if resp.status_code in (200, 201) or resp.status_code == 409 or (doc is None and resp.status_code == 404):
            return  # 409: a newer version is there already; 404 on delete: nothing to remove
        raise RuntimeError(f"Elasticsearch answered {resp.status_code} for {key}")

    def predicate(self, r: FromClause, resource_type: str, field: str,
                  queries: list[TextQuery]) -> ColumnElement[bool]:
        body = {"size": MAX_HITS, "_source": ["resource_id"], "track_total_hits": MAX_HITS + 1,
                "query": es_query(resource_type, field, queries)}
        try:
            self._ensure_index()
            resp = self.client.post(f"{self.base}/_search", json=body)
            resp.raise_for_status()
            hits = resp.json()["hits"]
        except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as exc:
            log.warning("Elasticsearch search failed: %s", type(exc).__name__)
            raise FhirError(503, EXCEPTION, "The full-text search service is not available") from exc
        total = hits.get("total", {})
        if (total.get("value", 0) if isinstance(total, dict) else total) > MAX_HITS:
            raise FhirError(400, TOO_COSTLY, f"The full-text criterion matches more than {MAX_HITS} resources; "
                                             "add words or other criteria")
        return r.c.id.in_([h["_source"]["resource_id"] for h in hits.get("hits", [])])
