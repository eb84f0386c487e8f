"""Subscriptions: R4 criteria subscriptions, the R4 Subscriptions Backport IG (topic-based), rest-hook and
websocket channels. Matching runs in each write's transaction (engine.py); delivery through the outbox
(delivery.py); the websocket channel reads the event rows (fhir_server/api/subscriptions_ws.py).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from fhir_server.subscriptions import operations
from fhir_server.subscriptions.delivery import RestHook
from fhir_server.subscriptions.engine import HANDSHAKE_TOPIC, HEARTBEAT_TOPIC, NOTIFY_TOPIC, SubscriptionEngine

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.outbox import OutboxDispatcher


_INSTALLED: weakref.WeakKeyDictionary[FhirServer, SubscriptionEngine] = weakref.WeakKeyDictionary()


def install_matching(server: FhirServer) -> SubscriptionEngine:
    """The write hooks and operations: every process that writes resources needs these (once per server:
    twice would number every event twice)."""
    engine = _INSTALLED.get(server)
    if engine is None:
        engine = _INSTALLED[server] = SubscriptionEngine(server.search_registry, server.settings.base_url or "")
        engine.register(server.hooks)
        operations.register(server)
    return engine


def install_delivery(server: FhirServer, dispatcher: OutboxDispatcher, *, timeout: float = 10.0) -> RestHook:
    """The outbox handlers: every process that dispatches the outbox needs these (with the matching hooks:
    the handlers record status changes, which must renew every process's cache)."""
    install_matching(server)
    hook = RestHook(server, timeout=timeout)
    dispatcher.register(HANDSHAKE_TOPIC, hook.handshake)
    dispatcher.register(NOTIFY_TOPIC, hook.notify)
    dispatcher.register(HEARTBEAT_TOPIC, hook.heartbeat)
    return hook


def install(server: FhirServer, dispatcher: OutboxDispatcher) -> None:
    install_delivery(server, dispatcher)
