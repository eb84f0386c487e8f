"""The websocket channel's rules, framework-free (the route is fhir_server/api/subscriptions_ws.py).

A socket binds subscriptions (R4 ``bind <id>`` with the caller's access, or the Backport IG's
``bind-with-token <token>`` with the access of whoever asked for the token), then asks ``poll`` for what to
send (only the events that access may read, checked as each is sent): R4's ``ping <id>`` per event, or the
backport notification Bundle per event, and heartbeat Bundles when the subscription asks for them. Events
come from the event rows written with each change, so any API process serves any socket.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from fhir_server.errors import FhirError
from fhir_server.rest.request import FhirRequest
from fhir_server.storage.repository import AccessPolicy
from fhir_server.subscriptions import spec as specs
from fhir_server.subscriptions import store
from fhir_server.subscriptions.bundles import notification_bundle
from fhir_server.subscriptions.visible import readable_events

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer


@dataclass
class Binding:
    spec: specs.SubscriptionSpec
    last: int  # the last event number sent
    # auth: whoever bound (their bearer token, or who asked for the binding token): every notification is
    # filtered by it when sent, so the socket is told only what that caller could read itself.
    access: AccessPolicy
    sent_at: float = field(default_factory=time.monotonic)


def _current(server: FhirServer, subscription_id: str, access: AccessPolicy) -> specs.SubscriptionSpec | None:
    response = server.handle(FhirRequest("GET", f"Subscription/{subscription_id}", access=access))
    if response.status != 200 or response.resource is None:
        return None  # unknown, deleted, or not readable with this access
    try:
        sub = specs.parse(response.resource)
    except FhirError:
        return None
    return sub if sub.channel_type == "websocket" else None


def _binding(server: FhirServer, sub: specs.SubscriptionSpec | None, access: AccessPolicy) -> Binding | None:
    if sub is None:
        return None
    with server.engine.connect() as conn:
        return Binding(sub, store.events_since_start(conn, sub.id), access)


def bind_token(server: FhirServer, token: str) -> Binding | None:
    """Backport ``bind-with-token``: the socket gets the access of whoever asked for the token."""
    with server.engine.connect() as conn:
        found = store.resolve_ws_token(conn, token)
    if found is None:
        return None
    sid, access = found
    return _binding(server, _current(server, sid, access), access)


def bind_id(server: FhirServer, subscription_id: str, access: AccessPolicy) -> Binding | None:
    """R4 ``bind <id>``: the socket gets the access of the websocket handshake's bearer token."""
    return _binding(server, _current(server, subscription_id, access), access)


def bound_message(binding: Binding, base: str) -> str:
    sub = binding.spec
    if sub.backport:
        return orjson.dumps(notification_bundle(sub, base=base, kind="handshake", events_since=binding.last)).decode()
    return f"bound {sub.id}"


def poll(server: FhirServer, binding: Binding, base: str) -> list[str]:
    """The messages due for one binding since the last poll (and advances it)."""
    sub = binding.spec
    with server.engine.connect() as conn:
        found = store.events(conn, sub.id, binding.last + 1, limit=100)
        total = store.events_since_start(conn, sub.id)
    out = []
    full = sub.content == "full-resource"
    sendable, contents = server.uow.run(lambda repo: readable_events(repo, found, full=full), write=False,
                                        access=binding.access) if found else ([], {})
    for event in sendable:
        if sub.backport:
            resources = {event.focus: contents[event.focus]} if event.focus in contents else {}
            out.append(orjson.dumps(notification_bundle(sub, base=base, kind="event-notification",
                                                        events_since=event.number, events=[event],
                                                        resources=resources)).decode())
        else:
            out.append(f"ping {sub.id}")
        binding.sent_at = time.monotonic()
    if found:
        binding.last = found[-1].number  # what the receiver may not read is passed over, not sent later
    if sub.backport and sub.heartbeat and time.monotonic() - binding.sent_at >= sub.heartbeat:
        out.append(orjson.dumps(notification_bundle(sub, base=base, kind="heartbeat", events_since=total)).decode())
        binding.sent_at = time.monotonic()
    return out
