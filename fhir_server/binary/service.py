"""Binary resources whose bytes live in a blob store: the write hook and the raw REST interactions.

Every Binary write passes the BEFORE_VALIDATE hook ``externalise``: ``data`` goes to the blob store and the
stored JSON keeps a pointer (see ``content.py``), so the resource tables never hold the bytes, whichever
way the Binary arrived (raw body, FHIR JSON, transaction Bundle entry, PATCH). ``route`` serves the
requests that differ for Binary (http.html#binary): raw uploads, and reads that answer with the content in
its own Content-Type, streamed from the store.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from fhir_server.binary import content, media
from fhir_server.binary.store import BlobStore, StoredBlob, file_chunks, open_store
from fhir_server.config import Settings
from fhir_server.errors import EXCEPTION, INVALID, FhirError
from fhir_server.hooks import HookPoint, Hooks, WriteEvent
from fhir_server.rest import interactions as ix
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.repository import Repository

log = logging.getLogger(__name__)

# Blob keys this request stored itself (raw uploads): the only pointers accepted besides the previous
# version's own. A client cannot point a Binary at bytes it never sent.
_minted: ContextVar[frozenset[str]] = ContextVar("binary_minted", default=frozenset())


@contextmanager
def minted(key: str) -> Iterator[None]:
    token = _minted.set(_minted.get() | {key})
    try:
        yield
    finally:
        _minted.reset(token)


class BinaryStorage:
    def __init__(self, settings: Settings, hooks: Hooks, store: BlobStore | None = None) -> None:
        self.settings = settings
        self._store = store
        hooks.register(HookPoint.BEFORE_VALIDATE, self.externalise)

    @property
    def store(self) -> BlobStore:
        if self._store is None:  # built on first use: a server that never sees a Binary needs no store
            self._store = open_store(self.settings)
        return self._store

    # --- writes ------------------------------------------------------------------------------------------

    def externalise(self, event: WriteEvent, _repo: Repository | None) -> None:
        """BEFORE_VALIDATE: Binary.data -> blob store; the resource keeps a pointer instead of the bytes."""
        resource = event.resource
        if event.resource_type != "Binary" or resource is None:
            return
        if "data" in resource:
            blob = self.store.put(content.decode_data(resource["data"]), max_bytes=self.settings.max_binary_bytes)
            event.resource = content.with_pointer(resource, blob)  # a new dict: a retried write sees the original
            return
        claimed = content.pointer(resource)
        if claimed is None:
            return
        previous = content.pointer(event.previous.content if event.previous else None)
        if claimed.key in _minted.get() or previous == claimed:
            return
        raise FhirError(400, INVALID, "Binary._data names stored content this Binary does not hold; send the "
                                      "content as Binary.data or as a raw body", ("Binary._data",))

    @contextmanager
    def staged(self, req: FhirRequest) -> Iterator[FhirRequest]:
        """Store a raw upload's content before the unit of work begins, so no transaction (on SQLite, the
        write lock) is held while it is copied; the request handed on carries the stored blob instead."""
        if not media.is_raw_write(req.method, req.path, req.header("content-type")):
            yield req
            return
        blob = self.store.put(_body_chunks(req), max_bytes=self.settings.max_binary_bytes)
        with minted(blob.key):
            yield replace(req, body=None, body_file=None, resource=content.with_pointer({}, blob))

    def raw_write(self, req: FhirRequest, repo: Repository, resource_id: str | None) -> FhirResponse:
        """POST /Binary or PUT /Binary/{id} with the content as the body (any non-FHIR Content-Type).

        The content was normally stored by ``staged``; otherwise it is stored here, and a unit-of-work retry
        reads the body again from its start (the key being the content's hash, nothing new is stored)."""
        blob = content.pointer(req.resource)
        if blob is None or blob.key not in _minted.get():
            blob = self.store.put(_body_chunks(req), max_bytes=self.settings.max_binary_bytes)
        resource: dict[str, Any] = {"resourceType": "Binary", "contentType": _content_type(req)}
        if resource_id is not None:
            resource["id"] = resource_id
        security = (req.header("x-security-context") or "").strip()
        if security:
            resource["securityContext"] = {"reference": security}
        inner = replace(req, headers={**req.headers, "content-type": "application/fhir+json"}, body=None,
                        body_file=None, resource=content.with_pointer(resource, blob))
        with minted(blob.key):
            if resource_id is None:
                return ix.create(inner, repo, "Binary")
            return ix.update(inner, repo, "Binary", resource_id)

    # --- reads -------------------------------------------------------------------------------------------

    def read(self, req: FhirRequest, repo: Repository, resource_id: str, vid: str | None) -> FhirResponse:
        """read / vread: raw content in its own Content-Type, or FHIR JSON with ``data`` when asked.

        The response carries the stored resource too (with its pointer, no bytes): a Bundle entry that
        reads a Binary shows that, as search does; HTTP sends the stream."""
        as_fhir = media.wants_fhir(req.param("_format"), req.header("accept"))
        if not as_fhir:  # _summary / _elements shape a resource, never the content itself
            req = replace(req, query=[(k, v) for k, v in req.query if k not in ("_summary", "_elements")])
        found = ix.read(req, repo, "Binary", resource_id) if vid is None else \
            ix.vread(req, repo, "Binary", resource_id, vid)
        if found.status != 200 or found.resource is None:
            return found  # 304 Not Modified
        resource = found.resource
        blob = content.pointer(resource)  # None also when _summary / _elements left data out
        if blob is not None and not self.store.exists(blob.key):
            log.error("blob %s of Binary/%s is missing from the store", blob.key, resource_id)
            raise FhirError(500, EXCEPTION, f"The content of Binary/{resource_id} is missing from the binary store")
        if as_fhir and media.wants_xml(req.param("_format"), req.header("accept")):
            # FHIR XML is written whole by the web adapter: the content is read into the resource here.
            data = base64.b64encode(b"".join(self.store.open(blob.key))).decode("ascii") if blob else None
            return FhirResponse(200, {**content.without_pointer(resource), **({"data": data} if data else {})},
                                found.headers)
        if as_fhir:
            pretty = (req.param("_pretty") or "").lower() == "true"
            start, end = content.json_form(resource, has_data=blob is not None, pretty=pretty)
            length = len(start) + len(end) + (content.encoded_length(blob.size) if blob else 0)
            return FhirResponse(200, resource, {**found.headers, "Content-Length": str(length)},
                                stream=self._stream(blob, start, end, encode=True),
                                media_type="application/fhir+json; charset=utf-8")
        media_type = str(resource.get("contentType") or "application/octet-stream")
        headers = {**found.headers, "Content-Type": media_type, "Content-Length": str(blob.size if blob else 0),
                   # The content is whatever a client uploaded: never let a browser run it as this origin.
                   "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
        security = resource.get("securityContext")
        if isinstance(security, dict) and security.get("reference"):
            headers["X-Security-Context"] = str(security["reference"])
        return FhirResponse(200, resource, headers, stream=self._stream(blob, b"", b"", encode=False),
                            media_type=media_type)

    def _stream(self, blob: StoredBlob | None, start: bytes, end: bytes, *, encode: bool) -> Iterator[bytes]:
        """Opened only when the web adapter starts sending, after the transaction has ended."""
        if start:
            yield start
        if blob is not None:
            chunks = self.store.open(blob.key)
            yield from content.base64_chunks(chunks) if encode else chunks
        if end:
            yield end

    # --- routing -----------------------------------------------------------------------------------------

    def route(self, req: FhirRequest, repo: Repository) -> FhirResponse | None:
        """The Binary requests handled here; None sends the rest down the generic path."""
        rest = media.binary_parts(req.path) or []
        if media.is_raw_write(req.method, req.path, req.header("content-type")):
            return self.raw_write(req, repo, rest[0] if rest else None)
        if media.is_read(req.method, req.path):
            return self.read(req, repo, rest[0], rest[2] if len(rest) == 3 else None)
        return None


def _body_chunks(req: FhirRequest) -> Iterator[bytes]:
    if req.body_file is not None:
        req.body_file.seek(0)
        yield from file_chunks(req.body_file)
    elif req.body:
        yield req.body


def _content_type(req: FhirRequest) -> str:
    value = " ".join((req.header("content-type") or "").split())  # code: single spaces only
    if not value:
        raise FhirError(400, INVALID, "A raw Binary upload needs a Content-Type", ("Binary.contentType",))
    return value
