"""The websocket channel, ``/fhir/subscriptions/ws`` (web adapter only; the rules live in subscriptions/).

Messages from the client: ``bind-with-token <token>`` (a token from ``Subscription/[id]/$get-ws-binding-token``,
Backport IG) or R4's ``bind <id>`` (which needs the bearer token of the websocket handshake request when
auth is on, and that token must be able to read the Subscription). Then the server sends, per event, R4's
``ping <id>`` for an R4 subscription or the backport notification Bundle for a topic-based one (a handshake
Bundle right after binding, heartbeat Bundles when the subscription asks for them).

Events come from the event rows written in each change's transaction, polled every ``POLL_SECONDS``, so
any API process can serve a socket whatever process made the change.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.auth import bearer_access
from fhir_server.errors import FhirError
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.subscriptions import spec as specs
from fhir_server.subscriptions import store
from fhir_server.subscriptions.bundles import Event, notification_bundle

router = APIRouter()
POLL_SECONDS = 0.1


@dataclass
class Binding:
    spec: specs.SubscriptionSpec
    last: int  # the last event number sent
    sent_at: float = field(default_factory=time.monotonic)


def _current(server: FhirServer, subscription_id: str, access: Any = None) -> specs.SubscriptionSpec | None:
    response = server.handle(FhirRequest("GET", f"Subscription/{subscription_id}", access=access))
    if response.status != 200 or response.resource is None:
        return None
    try:
        sub = specs.parse(response.resource)
    except FhirError:
        return None
    return sub if sub.channel_type == "websocket" else None


def _bind_token(server: FhirServer, token: str) -> tuple[specs.SubscriptionSpec, int] | None:
    with server.engine.connect() as conn:
        sid = store.resolve_ws_token(conn, token)
        if sid is None:
            return None
        sub = _current(server, sid)
        return (sub, store.events_since_start(conn, sid)) if sub else None


def _bind_id(server: FhirServer, sid: str, access: Any) -> tuple[specs.SubscriptionSpec, int] | None:
    sub = _current(server, sid, access)
    if sub is None:
        return None
    with server.engine.connect() as conn:
        return sub, store.events_since_start(conn, sid)


def _vread(server: FhirServer, focus: str) -> dict[str, Any] | None:
    rtype, rid, _h, vid = focus.split("/")
    return server.uow.run(lambda repo: repo.vread(rtype, rid, int(vid)), write=False).content


def _new_events(server: FhirServer, binding: Binding) -> tuple[list[Event], dict[str, Any], int]:
    with server.engine.connect() as conn:
        found = store.events(conn, binding.spec.id, binding.last + 1, limit=100)
        total = store.events_since_start(conn, binding.spec.id)
    resources: dict[str, Any] = {}
    if binding.spec.backport and binding.spec.content == "full-resource":
        for event in found:
            if event.interaction != "delete":
                resources[event.focus] = _vread(server, event.focus)
    return found, resources, total


def _as_http(ws: WebSocket) -> Request:
    """The handshake request as HTTP: tokens are issued for (and checked against) the http(s) base URL."""
    scheme = {"ws": "http", "wss": "https"}.get(ws.scope.get("scheme", "ws"), "http")
    return Request({**ws.scope, "type": "http", "scheme": scheme, "method": "GET"})


async def _send_bundle(ws: WebSocket, bundle: dict[str, Any]) -> None:
    await ws.send_text(orjson.dumps(bundle).decode())


@router.websocket("/fhir/subscriptions/ws")
async def subscriptions_ws(ws: WebSocket) -> None:
    server: FhirServer = ws.app.state.fhir
    base = (server.settings.base_url or str(ws.base_url).replace("ws", "http", 1).rstrip("/") + "/fhir")
    await ws.accept()
    bindings: dict[str, Binding] = {}
    try:
        while True:
            try:
                message: str | None = await asyncio.wait_for(ws.receive_text(), timeout=POLL_SECONDS)
            except TimeoutError:
                message = None
            if message:
                verb, _, arg = message.strip().partition(" ")
                arg = arg.strip()
                bound = None
                if verb == "bind-with-token" and arg:
                    bound = await run_in_threadpool(_bind_token, server, arg)
                elif verb == "bind" and arg:
                    access = await bearer_access(_as_http(ws), "subscriptions/ws")
                    if isinstance(access, Response):
                        await ws.send_text(f"error {arg} unauthorized")
                        await ws.close(code=1008)
                        return
                    bound = await run_in_threadpool(_bind_id, server, arg, access)
                else:
                    await ws.send_text("error unknown command")
                    continue
                if bound is None:
                    await ws.send_text(f"error {arg} not bound")
                    continue
                sub, since = bound
                bindings[sub.id] = Binding(sub, since)
                if sub.backport:
                    await _send_bundle(ws, notification_bundle(sub, base=base, kind="handshake", events_since=since))
                else:
                    await ws.send_text(f"bound {sub.id}")
            for binding in list(bindings.values()):
                found, resources, total = await run_in_threadpool(_new_events, server, binding)
                for event in found:
                    if binding.spec.backport:
                        await _send_bundle(ws, notification_bundle(
                            binding.spec, base=base, kind="event-notification", events_since=event.number,
                            events=[event],
                            resources=resources))
                    else:
                        await ws.send_text(f"ping {binding.spec.id}")
                    binding.last, binding.sent_at = event.number, time.monotonic()
                period = binding.spec.heartbeat
                if binding.spec.backport and period and time.monotonic() - binding.sent_at >= period:
                    await _send_bundle(ws, notification_bundle(binding.spec, base=base, kind="heartbeat",
                                                               events_since=total))
                    binding.sent_at = time.monotonic()
    except WebSocketDisconnect:
        return
