"""FHIR requests go straight to the FHIR endpoint, past FastAPI's router.

The FHIR catch-all (``/fhir/{path:path}``) is included last, so FastAPI's router tried every other route of
the app on each FHIR request (~17 included routers: SMART, console, admin, docs...), about a fifth of a
read's server CPU (bench/profile_read.py). This middleware answers a FHIR request itself unless another
route claims its path (``/fhir/.well-known/*``, the Subscription websocket, callbacks mounted under /fhir):
those, and the methods the FHIR route does not serve, still go through the router as before.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from fastapi.responses import Response
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


class FhirFastPath:
    def __init__(self, app: ASGIApp, endpoint: Endpoint, methods: list[str], own: list[BaseRoute]) -> None:
        self.app = app
        self.endpoint = endpoint
        self.methods = frozenset(methods)
        self.own = own  # the FHIR endpoint's routes: every other route under /fhir keeps its path
        self._claimed: list[re.Pattern[str]] | None = None

    def claimed(self, scope: Scope) -> list[re.Pattern[str]]:
        """Path patterns of the app's other routes under /fhir, collected on the first request (every route
        is added by then: create_app and the mounts run before serving)."""
        if self._claimed is None:
            self._claimed = [p for route in _leaves(scope["app"].router.routes) if route not in self.own
                             and (p := getattr(route, "path_regex", None)) is not None
                             and str(getattr(route, "path", "")).startswith("/fhir")]
        return self._claimed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if not (path == "/fhir" or path.startswith("/fhir/")) or scope["method"] not in self.methods \
                or any(p.match(path) for p in self.claimed(scope)):
            await self.app(scope, receive, send)
            return
        scope["path_params"] = {"path": path[6:]}  # what the route "/fhir/{path:path}" would give
        request = Request(scope, receive, send)
        try:
            response = await self.endpoint(request)
        except Exception as exc:  # answered by the app's own handler for it, as if the router had run
            response = await _handler(scope, exc)(request, exc)
        await response(scope, receive, send)


def _handler(scope: Scope, exc: Exception) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The app's exception handler for ``exc`` (the nearest class in its MRO: FhirError, else Exception)."""
    handlers = scope["app"].exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    raise exc  # no handler at all: the server's own last resort, as for any other route


def _leaves(routes: list[BaseRoute]) -> list[BaseRoute]:
    """Every route, also those inside included routers (FastAPI keeps them in ``original_router``)."""
    out: list[BaseRoute] = []
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is not None:
            out += _leaves(inner)
        else:
            out.append(route)
    return out
