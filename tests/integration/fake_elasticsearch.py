"""A small, real HTTP server on loopback speaking the part of Elasticsearch's REST API the full-text
backend uses -- no Elasticsearch is available here. Honest about its limits: index creation, ``_doc`` PUT /
DELETE with external versions (``external_gte``), and ``_search`` with ``bool`` (filter / must / should /
minimum_should_match), ``term``, ``match`` (one word) and ``match_phrase``, over whitespace-separated words
(the backend sends words already folded). Anything else answers 400, so an unexpected request fails a test.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


class FakeElasticsearch:
    def __init__(self) -> None:
        self.indices: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}  # index -> id -> (version, doc)
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length)) if length else None

            def do_PUT(self) -> None:
                self._answer(*fake.handle("PUT", self.path, self._body()))

            def do_DELETE(self) -> None:
                self._answer(*fake.handle("DELETE", self.path, None))

            def do_POST(self) -> None:
                self._answer(*fake.handle("POST", self.path, self._body()))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeElasticsearch:
        self.thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def docs(self, index: str) -> dict[str, tuple[int, dict[str, Any]]]:
        with self.lock:
            return dict(self.indices.get(index, {}))

    def handle(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        url = urlsplit(path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with self.lock:
            self.requests.append((method, path))
            if method == "PUT" and len(parts) == 1:
                if parts[0] in self.indices:
                    return 400, {"error": {"type": "resource_already_exists_exception"}, "status": 400}
                self.indices[parts[0]] = {}
                return 200, {"acknowledged": True, "index": parts[0]}
            if len(parts) == 3 and parts[1] == "_doc" and method in ("PUT", "DELETE"):
                return self._doc(method, parts[0], parts[2], query, body)
            if method == "POST" and len(parts) == 2 and parts[1] == "_search":
                return self._search(parts[0], body)
        return 400, {"error": {"type": "unsupported_by_fake", "reason": f"{method} {path}"}}

    def _doc(self, method: str, index: str, doc_id: str, query: dict[str, str],
             body: Any) -> tuple[int, dict[str, Any]]:
        if query.get("version_type") != "external_gte" or not query.get("version", "").isdigit():
            return 400, {"error": {"type": "unsupported_by_fake", "reason": "external_gte versions only"}}
        docs = self.indices.setdefault(index, {})
        version = int(query["version"])
        current = docs.get(doc_id)
        if current is not None and current[0] > version:
            return 409, {"error": {"type": "version_conflict_engine_exception"}, "status": 409}
        if method == "DELETE":
            if current is None:
                return 404, {"result": "not_found"}
            del docs[doc_id]
            return 200, {"result": "deleted"}
        docs[doc_id] = (version, body)
        return (200 if current else 201), {"result": "updated" if current else "created", "_version": version}

    def _search(self, index: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            hits = [(i, d) for i, (_, d) in sorted(self.indices.get(index, {}).items()) if _matches(body["query"], d)]
        except (KeyError, TypeError, ValueError) as exc:
            return 400, {"error": {"type": "unsupported_by_fake", "reason": str(exc)}}
        fields = body.get("_source")
        out = [{"_index": index, "_id": i, "_source": {k: d[k] for k in fields} if fields else d}
               for i, d in hits[:body.get("size", 10)]]
        return 200, {"took": 1, "hits": {"total": {"value": len(hits), "relation": "eq"}, "hits": out}}


def _matches(query: dict[str, Any], doc: dict[str, Any]) -> bool:
    (kind, spec), = query.items()
    if kind == "bool":
        musts = [*spec.get("filter", []), *spec.get("must", [])]
        shoulds = spec.get("should", [])
        ok = all(_matches(q, doc) for q in musts)
        if shoulds:
            ok = ok and sum(_matches(q, doc) for q in shoulds) >= int(spec.get("minimum_should_match", 1))
        return ok
    (field, value), = spec.items()
    words = str(doc.get(field, "")).lower().split()
    if kind == "term":
        return doc.get(field) == value
    if kind == "match":
        text = value["query"] if isinstance(value, dict) else value
        return any(w in words for w in str(text).lower().split())  # match: any word (ES's default OR)
    if kind == "match_phrase":
        phrase = str(value).lower().split()
        return any(words[i:i + len(phrase)] == phrase for i in range(len(words) - len(phrase) + 1))
    raise ValueError(f"query {kind} is not implemented by the fake")
