"""The websocket channel, ``/fhir/subscriptions/ws``: web adapter only (rules: subscriptions/websocket.py).

Client messages: ``bind-with-token <token>`` (from ``Subscription/[id]/$get-ws-binding-token``, Backport IG)
or R4's ``bind <id>`` (needs the websocket handshake's bearer token when auth is on, and that token must be
able to read the Subscription). Replies: ``bound <id>`` or a handshake Bundle, ``error <arg> ...``; then
``ping <id>`` or notification Bundles, polled every ``POLL_SECONDS``.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.auth import bearer_access
from fhir_server.api.tenants import stack_of, tenant_urls
from fhir_server.rest.server import FhirServer
from fhir_server.subscriptions import websocket as channel

router = APIRouter()
POLL_SECONDS = 0.1


def _as_http(ws: WebSocket) -> Request:
    """The handshake request as HTTP: tokens are issued for (and checked against) the http(s) base URL."""
    scheme = {"ws": "http", "wss": "https"}.get(ws.scope.get("scheme", "ws"), "http")
    return Request({**ws.scope, "type": "http", "scheme": scheme, "method": "GET"})


@router.websocket("/fhir/subscriptions/ws")
async def subscriptions_ws(ws: WebSocket) -> None:
    server: FhirServer = stack_of(ws).fhir
    base = tenant_urls(_as_http(ws), server.settings.base_url)[1]
    await ws.accept()
    bindings: dict[str, channel.Binding] = {}
    try:
        while True:
            try:
                message: str | None = await asyncio.wait_for(ws.receive_text(), timeout=POLL_SECONDS)
            except TimeoutError:
                message = None
            if message:
                verb, _, arg = message.strip().partition(" ")
                arg = arg.strip()
                if verb == "bind-with-token" and arg:
                    binding = await run_in_threadpool(channel.bind_token, server, arg)
                elif verb == "bind" and arg:
                    access = await bearer_access(_as_http(ws), "subscriptions/ws")
                    if isinstance(access, Response):
                        await ws.send_text(f"error {arg} unauthorized")
                        await ws.close(code=1008)
                        return
                    binding = await run_in_threadpool(channel.bind_id, server, arg, access)
                else:
                    await ws.send_text("error unknown command")
                    continue
                if binding is None:
                    await ws.send_text(f"error {arg} not bound")
                    continue
                bindings[binding.spec.id] = binding
                await ws.send_text(channel.bound_message(binding, base))
            for binding in list(bindings.values()):
                for text in await run_in_threadpool(channel.poll, server, binding, base):
                    await ws.send_text(text)
    except WebSocketDisconnect:
        return
