"""URL-based tenancy (HAPI's): ``/fhir/{tenant}/...`` is the tenant's FHIR base, ``/t/{tenant}/...`` its other
endpoints (SMART /auth, /admin, /docs, the websocket); ``/fhir/...`` and ``/...`` are the default tenant's.

The middleware strips the tenant from the path, so every route serves every tenant, and leaves the tenant's
services (``TenantStack``) in the scope; routes take them with ``stack_of(request)``. A suspended tenant is
refused here, before any route, token check or database work of its own.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from fhir_server.errors import FORBIDDEN, NOT_FOUND, TRANSIENT, Issue, operation_outcome
from fhir_server.tenancy.model import CODE, DEFAULT, RESERVED, TenantStatus
from fhir_server.tenancy.stacks import Tenants, TenantStack

STACK = "fhir_tenant_stack"
PREFIX = re.compile(r"^/(fhir|t)/([^/]+)(/.*)?$")


def stack_of(conn: HTTPConnection | Scope) -> TenantStack:
    scope = conn.scope if isinstance(conn, HTTPConnection) else conn
    stack: TenantStack | None = scope.get(STACK)
    if stack is None:
        tenants: Tenants = scope["app"].state.tenants
        return tenants.default
    return stack


def tenant_urls(conn: HTTPConnection, settings_base_url: str | None) -> tuple[str, str]:
    """(root of the tenant's non-FHIR endpoints, its FHIR base URL) for this request."""
    code = stack_of(conn).code
    if settings_base_url:
        base = settings_base_url.rstrip("/")
        root = base.removesuffix("/fhir")
    else:
        root = str(conn.base_url).rstrip("/")
        base = root + "/fhir"
    if code == DEFAULT:
        return root, base
    return f"{root}/t/{code}", f"{base}/{code}"


async def _refuse(send: Send, status: int, code: str, text: str) -> None:
    body = orjson.dumps(operation_outcome([Issue(code, text)]))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/fhir+json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class TenantRouting:
    def __init__(self, app: ASGIApp, tenants: Tenants) -> None:
        self.app = app
        self.tenants = tenants

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        match = PREFIX.match(scope["path"])
        # Only lower-case first segments can be tenants: /fhir/Patient, /fhir/$export, /fhir/_history are not.
        if match is None or not CODE.match(match.group(2)) or match.group(2) in RESERVED:
            await self.app(scope, receive, send)
            return
        kind, code, rest = match.group(1), match.group(2), match.group(3) or ""
        seen = self.tenants.seen(code)
        status = seen[0] if seen is not None else await run_in_threadpool(self.tenants.status, code)
        refusal = _refusal(code, status)
        if refusal is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4403})
                return
            await _refuse(send, *refusal)
            return
        stack = self.tenants.made_stack(code) or await run_in_threadpool(self.tenants.stack, code)
        path = ("/fhir" + rest) if kind == "fhir" else (rest or "/")
        raw = scope.get("raw_path") or scope["path"].encode()
        strip = f"/{kind}/{code}".encode()  # the raw path keeps its percent-encoding
        raw = (b"/fhir" if kind == "fhir" else b"") + raw[len(strip):] if raw.startswith(strip) else path.encode()
        inner: dict[str, Any] = {**scope, "path": path, "raw_path": raw or b"/", STACK: stack}
        await self.app(inner, receive, send)


def _refusal(code: str, status: TenantStatus | None) -> tuple[int, str, str] | None:
    if status is None or status == TenantStatus.INACTIVE:
        return 404, NOT_FOUND, f"No hospital {code} is served here"
    if status == TenantStatus.SUSPENDED:
        return 403, FORBIDDEN, f"Hospital {code} is suspended on this server"
    if status == TenantStatus.PENDING:
        return 503, TRANSIENT, f"Hospital {code} is still being set up"
    return None
