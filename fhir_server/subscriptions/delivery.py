"""Outbox handlers for rest-hook subscriptions: the handshake and each notification.

At least once: a notification whose POST fails (connection error, timeout, non-2xx) raises, so the outbox
retries it with backoff. One Subscription version per real state change, not per failed attempt: a
failure that its first retry mends changes nothing; once a notification has failed ERROR_AFTER times the
subscription shows ``status: error`` (``error`` says why, written once, not per attempt), and while any of
its notifications is dead-lettered it stays ``error`` with their count, until they are retried and
delivered (``fhir-server outbox retry``) or discarded. A success with none dead sets it ``active`` again.
The outbox key is ``Subscription/<id>/event/<n>``: a retry after a
crash resends the same event number, which the receiver drops as a duplicate. A failed handshake makes the
subscription ``error`` at once (the endpoint is not there to take notifications).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from sqlalchemy import Connection, func, select

from fhir_server.auth.stored import load_access
from fhir_server.errors import FhirError
from fhir_server.outbound import request_guard
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from fhir_server.storage.models import OUTBOX
from fhir_server.storage.outbox import count_attempt
from fhir_server.storage.repository import Repository, Version
from fhir_server.subscriptions import spec as specs
from fhir_server.subscriptions import store
from fhir_server.subscriptions.bundles import Event, notification_bundle
from fhir_server.subscriptions.engine import NOTIFY_TOPIC, SERVER_WRITE, schedule_heartbeat
from fhir_server.subscriptions.spec import SubscriptionSpec
from fhir_server.subscriptions.tables import STATE
from fhir_server.subscriptions.visible import readable_events

log = logging.getLogger(__name__)
# Handshakes, heartbeats and status: the server's bookkeeping of the subscription, no resource it reports on.
BOOKKEEPING = as_system("rest-hook delivery reads the Subscription it serves")


ERROR_AFTER = 2  # failed attempts of one notification before the subscription shows error


class DeliveryError(Exception):
    pass


def _attempts(conn: Connection, key: str) -> tuple[int, int]:
    """(attempts so far, this one included; max_attempts) of the notification's outbox row."""
    row = conn.execute(select(OUTBOX.c.attempts, OUTBOX.c.max_attempts).where(
        OUTBOX.c.topic == NOTIFY_TOPIC, OUTBOX.c.key == key).order_by(OUTBOX.c.pk.desc()).limit(1)).first()
    return (int(row.attempts), int(row.max_attempts)) if row is not None else (1, 1)


def dead_letters(conn: Connection, subscription_id: str) -> int:
    """How many of the subscription's notifications are dead-lettered (given up on, not discarded)."""
    return int(conn.execute(select(func.count()).select_from(OUTBOX).where(
        OUTBOX.c.status == "dead", OUTBOX.c.topic == NOTIFY_TOPIC,
        OUTBOX.c.key.like(f"Subscription/{subscription_id}/event/%"))).scalar() or 0)


DEAD_MARK = "dead-lettered: the endpoint failed every attempt"


def dead_letter_error(count: int) -> str:
    return (f"{count} notification{'s' if count != 1 else ''} {DEAD_MARK} "
            "(retry or discard them with `fhir-server outbox`)")


class RestHook:
    def __init__(self, server: FhirServer, *, timeout: float = 10.0) -> None:
        self.server = server
        self.base = server.settings.base_url or ""
        # Every request is checked against where the server may send (a name may resolve elsewhere later).
        guard = request_guard(server.settings, "Subscription.channel.endpoint")
        # count_attempt: the outbox row's attempt is recorded as the request leaves, after the guard passed it.
        self.client = httpx.Client(timeout=timeout, follow_redirects=False,
                                   event_hooks={"request": [guard, count_attempt]})

    def _base(self, conn: Connection, subscription_id: str) -> str:
        """FHIR_BASE_URL, else the base the subscription was written through: absolute URLs either way."""
        if self.base:
            return self.base
        return str(conn.execute(select(STATE.c.base_url).where(STATE.c.subscription_id == subscription_id))
                   .scalar() or "")

    def _current(self, subscription_id: str) -> Version | None:
        version = self.server.uow.run(lambda repo: repo.current("Subscription", subscription_id), write=False,
                                      access=BOOKKEEPING)
        return None if version is None or version.deleted or version.content is None else version

    def _post(self, sub: SubscriptionSpec, body: dict[str, Any] | None) -> None:
        headers = {name: value for name, value in sub.headers}
        content = b""
        if body is not None:
            headers["Content-Type"] = sub.mime_type or "application/fhir+json"
            content = orjson.dumps(body)
        assert sub.endpoint is not None
        try:
            response = self.client.post(sub.endpoint, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__} posting to the endpoint") from exc
        except FhirError as exc:  # the endpoint's host is not one the server may post to
            raise DeliveryError(exc.issues[0].diagnostics if exc.issues else "endpoint not allowed") from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"The endpoint answered HTTP {response.status_code}")

    def set_status(self, subscription_id: str, status: str, error: str | None,
                   only_from: tuple[str, ...] | None = None) -> None:
        """Record the server's view of a subscription (If-Match: a client's concurrent edit wins).
        ``only_from``: change it only from these statuses (another delivery may have recorded it already)."""
        token = SERVER_WRITE.set(True)
        try:
            for _attempt in range(5):
                current = self._current(subscription_id)
                if current is None or current.content is None or current.content.get("status") == "off":
                    return
                if only_from is not None and current.content.get("status") not in only_from:
                    return
                content = {**current.content, "status": status}
                content.pop("error", None)
                if error:
                    content["error"] = error
                if content == current.content:
                    return
                response = self.server.handle(FhirRequest(
                    "PUT", f"Subscription/{subscription_id}", resource=content,
                    headers={"content-type": "application/fhir+json", "if-match": current.etag},
                    access=as_system("the server records a rest-hook subscription's status")))
                if response.status in (200, 201):
                    return
                if response.status != 412:
                    raise RuntimeError(f"recording status {status} on Subscription/{subscription_id}: "
                                       f"{response.status}")
        finally:
            SERVER_WRITE.reset(token)

    def handshake(self, _key: str, payload: dict[str, Any]) -> None:
        current = self._current(payload["subscription"])
        if current is None or current.version_id != payload["version"] or \
                (current.content or {}).get("status") != "requested":
            return  # changed since: that version queued its own handshake
        sub = specs.parse(current.content or {})
        body = None
        if sub.backport:
            with self.server.engine.connect() as conn:
                since = store.events_since_start(conn, sub.id)
                base = self._base(conn, sub.id)
            body = notification_bundle(sub, base=base, kind="handshake", events_since=since, status="requested")
        try:
            self._post(sub, body)
        except DeliveryError as exc:
            log.warning("subscription %s handshake failed: %s", sub.id, exc)
            self.set_status(sub.id, "error", f"Handshake failed: {exc}")
            return
        self.set_status(sub.id, "active", None)

    def notify(self, key: str, payload: dict[str, Any]) -> None:
        sid, number = payload["subscription"], int(payload["event"])

        def read(repo: Repository) -> tuple[Version | None, list[Event], dict[str, Any] | None]:
            """Subscription, event and focus in one read-only unit of work (one connection), under the
            author's access: an event whose focus the author may no longer read is not delivered."""
            current = repo.current("Subscription", sid)  # the author's own subscription, whatever they may read
            if current is None or current.deleted or (current.content or {}).get("status") not in ("active", "error"):
                return None, [], None
            full = specs.parse(current.content or {}).content == "full-resource"
            found, contents = readable_events(repo, store.events(repo.conn, sid, number, number), full=full)
            return current, found, contents.get(found[0].focus) if found else None

        with self.server.engine.connect() as conn:
            author = load_access(conn.execute(select(STATE.c.author).where(STATE.c.subscription_id == sid)).scalar())
            base = self._base(conn, sid)
        current, found, resource = self.server.uow.run(read, write=False, access=author)  # auth: the author's
        if current is None or not found:
            return  # deleted, switched off, being re-handshaken, or not the author's to read: nothing to deliver
        sub = specs.parse(current.content or {})
        event = found[0]
        if sub.backport:
            body: dict[str, Any] | None = notification_bundle(
                # events-since-subscription-start as of this event: the receiver sees the same bundle on a retry
                sub, base=base, kind="event-notification", events_since=event.number, events=[event],
                resources={event.focus: resource})
        else:
            body = resource  # R4: the resource itself, or an empty POST when the payload is not set
        try:
            self._post(sub, body)
        except DeliveryError as exc:
            self._failed(sid, key, exc)
            raise
        if sub.status == "error":
            with self.server.engine.connect() as conn:
                dead = dead_letters(conn, sid)
            if dead:
                self.set_status(sid, "error", dead_letter_error(dead))  # no new version while the count holds
            else:
                self.set_status(sid, "active", None, only_from=("error",))

    def refresh(self, _key: str, payload: dict[str, Any]) -> None:
        """After dead notifications were discarded: the count again, or ``active`` when none is left (only
        an error that was the dead letters' own: a failing endpoint's error waits for a success)."""
        sid = str(payload["subscription"])
        current = self._current(sid)
        error = str((current.content or {}).get("error") or "") if current is not None else ""
        if current is None or (current.content or {}).get("status") != "error" or DEAD_MARK not in error:
            return
        with self.server.engine.connect() as conn:
            dead = dead_letters(conn, sid)
        if dead:
            self.set_status(sid, "error", dead_letter_error(dead))
        else:
            self.set_status(sid, "active", None, only_from=("error",))

    def _failed(self, sid: str, key: str, exc: DeliveryError) -> None:
        with self.server.engine.connect() as conn:
            attempts, max_attempts = _attempts(conn, key)
            # this row is dead-lettered by the dispatcher once this handler raises on its last attempt
            dead = dead_letters(conn, sid) + (1 if attempts >= max_attempts else 0)
        if dead:
            self.set_status(sid, "error", dead_letter_error(dead))
        elif attempts >= ERROR_AFTER:
            self.set_status(sid, "error", f"Notification failed: {exc}", only_from=("active",))

    def heartbeat(self, _key: str, payload: dict[str, Any]) -> None:
        """Backport heartbeat: a notification with no events when none was sent for a whole period."""
        current = self._current(payload["subscription"])
        if current is None or current.version_id != payload["version"] or \
                (current.content or {}).get("status") != "active":
            return  # the chain ends: a newer version (if active) started its own
        sub = specs.parse(current.content or {})
        if not sub.heartbeat:
            return
        with self.server.engine.connect() as conn:
            since = store.events_since_start(conn, sub.id)
            last = store.events(conn, sub.id, since, since)
            base = self._base(conn, sub.id)
        quiet = not last or (datetime.now(UTC) - last[0].timestamp).total_seconds() >= sub.heartbeat
        if quiet:
            body = notification_bundle(sub, base=base, kind="heartbeat", events_since=since)
            try:
                self._post(sub, body)
            except DeliveryError as exc:
                log.warning("subscription %s heartbeat failed: %s", sub.id, exc)
        with self.server.engine.begin() as conn:
            schedule_heartbeat(conn, sub.id, current.version_id, sub.heartbeat)
