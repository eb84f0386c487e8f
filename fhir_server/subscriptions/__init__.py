"""Subscriptions: R4 criteria subscriptions, the R4 Subscriptions Backport IG (topic-based), rest-hook and
websocket channels. Matching runs in each write's transaction (engine.py); delivery through the outbox
(delivery.py); the websocket channel reads the event rows (fhir_server/api/subscriptions_ws.py).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fhir_server.config import Settings
from fhir_server.hooks import HookPoint, WriteEvent
from fhir_server.outbound import check_url
from fhir_server.subscriptions import operations
from fhir_server.subscriptions.delivery import RestHook
from fhir_server.subscriptions.engine import (
    HANDSHAKE_TOPIC,
    HEARTBEAT_TOPIC,
    NOTIFY_TOPIC,
    STATUS_TOPIC,
    SubscriptionEngine,
)

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.outbox import OutboxDispatcher
    from fhir_server.storage.repository import Repository


_INSTALLED: weakref.WeakKeyDictionary[FhirServer, SubscriptionEngine] = weakref.WeakKeyDictionary()


def install_matching(server: FhirServer) -> SubscriptionEngine:
    """The write hooks and operations: every process that writes resources needs these (once per server:
    twice would number every event twice)."""
    engine = _INSTALLED.get(server)
    if engine is None:
        engine = _INSTALLED[server] = SubscriptionEngine(server.search_registry, server.settings.base_url or "")
        engine.register(server.hooks)
        server.hooks.register(HookPoint.BEFORE_VALIDATE, _endpoint_check(server.settings))
        operations.register(server)
    return engine


def _endpoint_check(settings: Settings) -> Callable[[WriteEvent, Repository | None], None]:
    """A rest-hook endpoint must be one the server may post to (fhir_server/outbound.py): 422 naming it."""

    def hook(event: WriteEvent, _repo: Repository | None) -> None:
        channel = (event.resource or {}).get("channel") if event.resource_type == "Subscription" else None
        endpoint = channel.get("endpoint") if isinstance(channel, dict) else None
        if isinstance(channel, dict) and channel.get("type") == "rest-hook" and isinstance(endpoint, str):
            check_url(endpoint, settings, "Subscription.channel.endpoint", status=422)

    return hook


def install_delivery(server: FhirServer, dispatcher: OutboxDispatcher, *, timeout: float = 10.0) -> RestHook:
    """The outbox handlers: every process that dispatches the outbox needs these (with the matching hooks:
    the handlers record status changes, which must renew every process's cache)."""
    install_matching(server)
    hook = RestHook(server, timeout=timeout)
    # One ordered stream per subscription (handshake before notifications, event numbers in order);
    # different subscriptions are delivered in parallel.
    dispatcher.register(HANDSHAKE_TOPIC, hook.handshake, partition=by_subscription)
    dispatcher.register_window(NOTIFY_TOPIC, hook.notify, hook, partition=by_subscription)
    dispatcher.register(HEARTBEAT_TOPIC, hook.heartbeat, partition=by_subscription)
    dispatcher.register(STATUS_TOPIC, hook.refresh, partition=by_subscription)
    return hook


def by_subscription(_key: str, payload: dict[str, Any]) -> str:
    return f"Subscription/{payload.get('subscription')}"


def install(server: FhirServer, dispatcher: OutboxDispatcher) -> None:
    install_delivery(server, dispatcher)
