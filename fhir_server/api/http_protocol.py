"""uvicorn's HTTP/1.1 protocol, answering the requests it refuses itself as FHIR does: an OperationOutcome.

uvicorn rejects what it cannot parse before any application code runs, with a plain-text
``400 Invalid HTTP request received.``; a 100 KB request line ends there (httptools' URL parser stops at
64 KB). This subclass caps the request line (414) and the header block (431) while they arrive, so an
oversized request is refused before it is buffered, and writes every such refusal as OperationOutcome JSON.

It also hands each request an ``Interrupt`` (scope ``extensions["fhir.interrupt"]``) that it cancels when the
connection is lost before the response is complete: the FHIR endpoint runs reads under it, so a search whose
client has gone stops in the database (``fhir_server/storage/interrupt.py``) at no cost per request.
``fhir-server serve`` and the tests run uvicorn with it; under another process manager pass
``--http fhir_server.api.http_protocol:FhirHttpProtocol``.
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from fhir_server.config import get_settings
from fhir_server.errors import STRUCTURE, TOO_COSTLY, Issue, operation_outcome
from fhir_server.storage.interrupt import Interrupt

INTERRUPT = "fhir.interrupt"  # the ASGI scope extension holding the request's Interrupt


class RequestRefused(Exception):
    def __init__(self, status: int, issue: Issue) -> None:
        super().__init__(issue.diagnostics)
        self.status = status
        self.issue = issue


class FhirHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()  # the environment's (uvicorn builds one protocol per connection)
        self.max_url_bytes = settings.max_url_bytes
        self.max_header_bytes = settings.max_header_bytes
        self._header_bytes = 0
        self._refused: RequestRefused | None = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._refused = None
        cast(dict[str, Any], self.scope)["extensions"] = {INTERRUPT: Interrupt()}

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            interrupt = cast(dict[str, Any], cycle.scope).get("extensions", {}).get(INTERRUPT)
            if isinstance(interrupt, Interrupt):
                interrupt.cancel()
        super().connection_lost(exc)

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self.max_url_bytes:
            self._refuse(414, f"The request line's URL exceeds {self.max_url_bytes} bytes (FHIR_MAX_URL_BYTES); "
                              "send a long search as POST [type]/_search with a form body")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.max_header_bytes:
            self._refuse(431, f"The request headers exceed {self.max_header_bytes} bytes (FHIR_MAX_HEADER_BYTES)")
        super().on_header(name, value)

    def _refuse(self, status: int, message: str) -> None:
        self._refused = RequestRefused(status, Issue(TOO_COSTLY, message))
        raise self._refused  # httptools stops parsing; data_received answers with send_400_response

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it could not parse (and to ours refused above)."""
        refused = self._refused or RequestRefused(400, Issue(STRUCTURE, "The HTTP request is malformed"))
        body = orjson.dumps(operation_outcome([refused.issue]))
        self.transport.write(b"".join([
            STATUS_LINE[refused.status],
            *(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers),
            b"content-type: application/fhir+json; charset=utf-8\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]))
        self.transport.close()
