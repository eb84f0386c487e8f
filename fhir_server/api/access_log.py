"""Access log without PII: query values (names, identifiers, birth dates) are masked, bodies never logged.

Replaces uvicorn's access log, which prints full query strings.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("fhir_server.access")


def masked_target(path: str, query_string: bytes) -> str:
    if not query_string:
        return path
    names = [name for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)]
    return path + "?" + "&".join(f"{name}=***" for name in names)


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            log.info("%s %s %d %.1fms", scope["method"], masked_target(scope["path"], scope.get("query_string", b"")),
                     status, (time.perf_counter() - start) * 1000)
