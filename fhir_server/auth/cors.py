"""CORS for registered browser apps: a SMART app running in a browser may call the FHIR API and the token
endpoint from the origin of one of its registered redirect URIs, and from no other origin.

A plain ASGI middleware (no web framework): preflights from an allowed origin are answered here; other
responses get ``Access-Control-Allow-Origin`` added. No cookies are involved (bearer tokens), so
credentials are never allowed. Origins are read from the client registrations, cached for a minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, select

from fhir_server.auth.tables import AUTH_CLIENT

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CORS_PATHS = ("/fhir", "/auth/token", "/auth/revoke", "/auth/jwks")
ALLOW_HEADERS = "Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Match, If-None-Exist, " \
                "If-Modified-Since, X-Security-Context"
EXPOSE_HEADERS = "Location, Content-Location, ETag, Last-Modified, WWW-Authenticate, Retry-After"
CACHE_SECONDS = 60.0


def origin_of(uri: str) -> str | None:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


class RegisteredOrigins:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._origins: frozenset[str] = frozenset()
        self._loaded_at = -CACHE_SECONDS

    def allows(self, origin: str) -> bool:
        with self._lock:
            if time.monotonic() - self._loaded_at > CACHE_SECONDS:
                with self.engine.connect() as conn:
                    rows = conn.execute(select(AUTH_CLIENT.c.redirect_uris)).all()
                self._origins = frozenset(o for r in rows for u in r.redirect_uris if (o := origin_of(str(u))))
                self._loaded_at = time.monotonic()
            return origin.lower() in self._origins

    def refresh(self) -> None:
        with self._lock:
            self._loaded_at = -CACHE_SECONDS


class CorsMiddleware:
    def __init__(self, app: ASGIApp, origins: Callable[[Scope], RegisteredOrigins | None],
                 run_sync: Callable[..., Awaitable[Any]]) -> None:
        self.app = app
        self.origins = origins
        self.run_sync = run_sync  # e.g. starlette's run_in_threadpool: the origin lookup may touch the database

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(CORS_PATHS):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        raw_origin = headers.get(b"origin")
        registry = self.origins(scope)
        if raw_origin is None or registry is None:
            await self.app(scope, receive, send)
            return
        origin = raw_origin.decode("latin-1")
        if not await self.run_sync(registry.allows, origin):
            await self.app(scope, receive, send)  # no CORS headers: the browser keeps the response from the page
            return
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            await send({"type": "http.response.start", "status": 204, "headers": [
                (b"access-control-allow-origin", raw_origin), (b"vary", b"Origin"),
                (b"access-control-allow-methods", b"GET, HEAD, POST, PUT, PATCH, DELETE"),
                (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
                (b"access-control-max-age", b"600")]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"access-control-allow-origin", raw_origin),
                                      (b"vary", b"Origin"), (b"access-control-expose-headers", EXPOSE_HEADERS.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cors)
