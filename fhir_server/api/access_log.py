"""Access log without PII: query values (names, identifiers, birth dates) are masked, bodies never logged.

Replaces uvicorn's access log, which prints full query strings. Also gives each request its id: the
client's ``X-Request-ID`` when it is a plain token, else a new one; it is returned in the same header and
tagged on every log line written while the request runs (fhir_server/logs.py).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_server.logs import REQUEST_ID

log = logging.getLogger("fhir_server.access")
REQUEST_ID_HEADER = b"x-request-id"
_CLIENT_ID = re.compile(rb"^[A-Za-z0-9._\-]{1,64}$")  # anything else could forge log lines: replaced


def request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER and _CLIENT_ID.match(value):
            return value.decode("ascii")
    return uuid.uuid4().hex


def masked_target(path: str, query_string: bytes) -> str:
    if not query_string:
        return path
    names = [name for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)]
    return path + "?" + "&".join(f"{name}=***" for name in names)


# Told of each finished request: method, path, status, seconds (the Prometheus metrics, api/metrics.py).
Observer = Callable[[str, str, int, float], None]


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, observe: Observer | None = None) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        rid = request_id(scope)
        token = REQUEST_ID.set(rid)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, rid.encode("ascii"))]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - start
            log.info("%s %s %d %.1fms", scope["method"], masked_target(scope["path"], scope.get("query_string", b"")),
                     status, seconds * 1000)
            if self.observe is not None:
                self.observe(scope["method"], scope["path"], status, seconds)
            REQUEST_ID.reset(token)
