"""Outbox handlers for rest-hook subscriptions: the handshake and each notification.

At least once: a notification whose POST fails (connection error, timeout, non-2xx) raises, so the outbox
retries it with backoff. One Subscription version per real state change, not per failed attempt: a
failure that its first retry mends changes nothing; once a notification has failed ERROR_AFTER times the
subscription shows ``status: error`` (``error`` says why, written once, not per attempt), and while any of
its notifications is dead-lettered it stays ``error`` with their count, until they are retried and
delivered (``fhir-server outbox retry``) or discarded. A success with none dead sets it ``active`` again.
The outbox key is ``Subscription/<id>/event/<n>``: a retry after a
crash resends the same event number, which the receiver drops as a duplicate.

Handshakes are retried with the outbox's backoff (``HANDSHAKE_ATTEMPTS``); the subscription stays
``requested`` meanwhile and turns ``error`` when the last fails. Only a successful handshake verifies a
channel (``subscription_state.verified``); a notification whose subscription is not verified (its changed
channel awaits or failed its handshake, or it is off) is not sent and not dropped: it is kept as a ``held``
outbox row, released by the next successful handshake (engine.py). Only a deleted subscription drops them.

What is sent: the Backport IG's notification Bundles (POST) for topic-based subscriptions; for a plain R4
subscription the R4 Subscription page's rest-hook: with ``channel.payload`` the endpoint is a FHIR base and
the resource is sent as an update, ``PUT [endpoint]/[type]/[id]`` (a deletion as ``DELETE`` there), without
it an empty POST to the endpoint. ``channel.header`` lines go with every request, the handshake's too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, func, insert, select

from fhir_server.auth.stored import load_access
from fhir_server.outbound import check_url
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from fhir_server.storage.models import OUTBOX
from fhir_server.storage.outbox import attempt_number, count_attempt, current_batch
from fhir_server.storage.outbox_window import Prepared
from fhir_server.storage.repository import Repository, Version
from fhir_server.subscriptions import spec as specs
from fhir_server.subscriptions import store
from fhir_server.subscriptions.bundles import Event, notification_bundle
from fhir_server.subscriptions.engine import (
    HANDSHAKE_OK,
    HELD,
    LIVE,
    NOTIFY_TOPIC,
    SERVER_WRITE,
    schedule_heartbeat,
)
from fhir_server.subscriptions.spec import SubscriptionSpec
from fhir_server.subscriptions.tables import STATE
from fhir_server.subscriptions.visible import readable_events
from fhir_server.subscriptions.webhook import Request, Webhook, WebhookError

log = logging.getLogger(__name__)
# Handshakes, heartbeats and status: the server's bookkeeping of the subscription, no resource it reports on.
BOOKKEEPING = as_system("rest-hook delivery reads the Subscription it serves")


ERROR_AFTER = 2  # failed attempts of one notification before the subscription shows error
IN_FLIGHT = 8  # notifications of one subscription a lane sends at once (outbox_window.py)


class DeliveryError(Exception):
    pass


@dataclass
class _Batch:
    """What the notifications of one subscription claimed together share, read once after their claim (so
    no older than any of their events): the Subscription, whether it may be sent to, its base, and the
    events with their focus (under the author's access)."""

    current: Version | None
    spec: SubscriptionSpec | None
    ready: bool
    base: str
    numbers: frozenset[int]
    events: dict[int, Event] = field(default_factory=dict)
    resources: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    status_checked: bool = False  # a success already brought the status up to date in this batch


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
        self.width = IN_FLIGHT
        settings = server.settings
        # Every request is checked against where the server may send (a name may resolve elsewhere later).
        self.webhook = Webhook(lambda url: check_url(url, settings, "Subscription.channel.endpoint"),
                               timeout=timeout)

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

    @staticmethod
    def _request(sub: SubscriptionSpec, body: dict[str, Any] | None, *, method: str = "POST",
                 path: str = "") -> Request:
        """``path``: below the endpoint (R4 with a payload: ``/[type]/[id]``, the endpoint being a FHIR base)."""
        headers = {name: value for name, value in sub.headers}
        content = b""
        if body is not None:
            headers["Content-Type"] = sub.mime_type or "application/fhir+json"
            content = orjson.dumps(body)
        assert sub.endpoint is not None
        return Request(method, sub.endpoint.rstrip("/") + path if path else sub.endpoint, headers, content)

    def _post(self, sub: SubscriptionSpec, body: dict[str, Any] | None) -> None:
        """A handshake or heartbeat: one request, its attempt counted as it leaves."""
        request = self._request(sub, body)
        count_attempt()
        try:
            self.webhook.send(request)
        except WebhookError as exc:
            raise DeliveryError(str(exc)) from exc

    def _verified(self, subscription_id: str) -> bool:
        with self.server.engine.connect() as conn:
            return bool(conn.execute(select(STATE.c.verified).where(STATE.c.subscription_id == subscription_id))
                        .scalar())

    def set_status(self, subscription_id: str, status: str, error: str | None,
                   only_from: tuple[str, ...] | None = None, *, version: int | None = None,
                   verified: bool = False) -> None:
        """Record the server's view of a subscription (If-Match: a client's concurrent edit wins).
        ``only_from``: change it only from these statuses (another delivery may have recorded it already);
        ``version``: only that version (a handshake speaks for the version that asked for it); ``verified``:
        only while the channel's handshake stands (read after the version, which If-Match then pins)."""
        token = SERVER_WRITE.set(True)
        try:
            for _attempt in range(5):
                current = self._current(subscription_id)
                if current is None or current.content is None or current.content.get("status") == "off":
                    return
                if only_from is not None and current.content.get("status") not in only_from:
                    return
                if version is not None and current.version_id != version:
                    return
                if verified and not self._verified(subscription_id):
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

    def handshake(self, key: str, payload: dict[str, Any]) -> None:
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
            attempts, max_attempts = attempt_number()
            log.warning("subscription %s handshake attempt %d failed: %s", sub.id, attempts, exc)
            if attempts < max_attempts:
                raise  # retried with backoff; the subscription stays requested meanwhile
            self.set_status(sub.id, "error", f"Handshake failed: {exc}", version=current.version_id)
            return
        ok = HANDSHAKE_OK.set(True)  # verifies the channel and releases its held notifications (engine.py)
        try:
            self.set_status(sub.id, "active", None, only_from=("requested",), version=current.version_id)
        finally:
            HANDSHAKE_OK.reset(ok)

    def _batch(self, sid: str, number: int) -> _Batch:
        """The notification's batch: read for every row of the subscription the dispatcher claimed with this
        one (current_batch), once; a row outside any batch reads alone."""
        claimed = current_batch()
        cache = claimed.cache if claimed is not None else {}
        found = cache.get(f"notify {sid}")
        if isinstance(found, _Batch) and number in found.numbers:
            return found
        numbers = frozenset({number} | {int(i.payload["event"]) for i in (claimed.items if claimed else [])
                                        if i.topic == NOTIFY_TOPIC and i.payload.get("subscription") == sid})
        lo, hi = min(numbers), max(numbers)

        def read(repo: Repository) -> _Batch:
            """Subscription, whether it may be sent to, events and focus in one read-only unit of work (one
            connection), under the author's access: an event whose focus the author may no longer read is
            not delivered."""
            current = repo.current("Subscription", sid)  # the author's own subscription, whatever they may read
            if current is None or current.deleted:
                return _Batch(None, None, False, base, numbers)
            spec = specs.parse(current.content or {})
            verified = repo.execute(select(STATE.c.verified).where(STATE.c.subscription_id == sid)).scalar()
            if not verified or (current.content or {}).get("status") not in LIVE:
                return _Batch(current, spec, False, base, numbers)
            full = spec.content == "full-resource"
            wanted = [e for e in store.events(repo.conn, sid, lo, hi, limit=hi - lo + 1) if e.number in numbers]
            kept, contents = readable_events(repo, wanted, full=full)
            return _Batch(current, spec, True, base, numbers, {e.number: e for e in kept}, contents)

        with self.server.engine.connect() as conn:
            author = load_access(conn.execute(select(STATE.c.author).where(STATE.c.subscription_id == sid)).scalar())
            base = self._base(conn, sid)
        batch = self.server.uow.run(read, write=False, access=author)  # auth: the author's
        cache[f"notify {sid}"] = batch
        return batch

    def notify(self, key: str, payload: dict[str, Any]) -> None:
        """One notification alone (a lane sends them several at a time: prepare, send, sent)."""
        prepared = self.prepare(key, payload)
        if prepared is None:
            return
        count_attempt()
        error = self.webhook.exchange([prepared.request])[0]
        self.sent(key, payload, error)
        if error is not None:
            raise DeliveryError(str(error)) from error

    def prepare(self, key: str, payload: dict[str, Any]) -> Prepared | None:
        """The notification's request, or None when there is nothing to send. Its order key: a Backport
        subscription's events go one after another (event numbers); R4 with a payload updates the focus
        resource (``PUT``), so one focus's changes go in order; R4 without a payload, in any order."""
        sid, number = payload["subscription"], int(payload["event"])
        batch = self._batch(sid, number)
        sub = batch.spec
        if batch.current is None or sub is None:
            return None  # deleted: nobody left to tell
        if sub.channel_type != "rest-hook":
            return None  # now a websocket subscription: the event is in $events for it
        if not batch.ready:
            self._hold(sid, key, payload)  # a changed channel awaits its handshake, or it is off
            return None
        event = batch.events.get(number)
        if event is None:
            return None  # not the author's to read (any more): nothing to deliver
        resource = batch.resources.get(event.focus)
        method, path, order = "POST", "", None
        if sub.backport:
            body: dict[str, Any] | None = notification_bundle(
                # events-since-subscription-start as of this event: the receiver sees the same bundle on a retry
                sub, base=batch.base, kind="event-notification", events_since=event.number, events=[event],
                resources={event.focus: resource})
            order = ""
        elif sub.mime_type:  # R4 with a payload: the endpoint is a FHIR base, the resource is PUT there
            rtype, rid = event.focus.split("/")[:2]
            method, path = ("DELETE" if event.interaction == "delete" else "PUT"), f"/{rtype}/{rid}"
            body = None if event.interaction == "delete" else resource
            order = f"{rtype}/{rid}"
        else:
            body = None  # R4 without a payload: an empty POST, the notification alone
        return Prepared(self._request(sub, body, method=method, path=path), order)

    def send(self, requests: list[Any]) -> list[BaseException | None]:
        return list(self.webhook.exchange(requests))

    def sent(self, key: str, payload: dict[str, Any], error: BaseException | None) -> None:
        """After a notification's request: a failure may turn the subscription ``error``; a success brings
        it back (once per batch)."""
        sid = payload["subscription"]
        if error is not None:
            self._failed(sid, DeliveryError(str(error)))
            return
        batch = self._batch(sid, int(payload["event"]))
        sub = batch.spec
        if sub is not None and sub.status == "error" and not batch.status_checked:
            batch.status_checked = True  # the rest of the batch would find the same
            with self.server.engine.connect() as conn:
                dead = dead_letters(conn, sid)
            if dead:  # no new version while the count holds
                self.set_status(sid, "error", dead_letter_error(dead), only_from=LIVE, verified=True)
            else:  # never over a handshake that failed meanwhile: only a handshake verifies a changed channel
                self.set_status(sid, "active", None, only_from=("error",), verified=True)

    def _hold(self, sid: str, key: str, payload: dict[str, Any]) -> None:
        """Keep the notification for the next successful handshake: a ``held`` copy of its row (this one is
        finished by the dispatcher when the handler returns). Under the counter row's lock, so a handshake
        that succeeded meanwhile (and released what was held) makes it a ``pending`` one instead."""
        now = datetime.now(UTC)
        with self.server.engine.connect() as conn:
            conn.execution_options(fhir_write=True)
            with conn.begin():
                verified = conn.execute(select(STATE.c.verified).where(STATE.c.subscription_id == sid)
                                        .with_for_update()).scalar()
                conn.execute(insert(OUTBOX).values(
                    topic=NOTIFY_TOPIC, key=key, payload=payload, status="pending" if verified else HELD,
                    attempts=0, max_attempts=10, next_attempt_at=now, created_at=now,
                    last_error=None if verified else "waiting for the subscription's handshake"))

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
            self.set_status(sid, "error", dead_letter_error(dead), only_from=LIVE)
        else:
            self.set_status(sid, "active", None, only_from=("error",), verified=True)

    def _failed(self, sid: str, exc: DeliveryError) -> None:
        attempts, max_attempts = attempt_number()
        with self.server.engine.connect() as conn:
            # this row is dead-lettered by the dispatcher once this handler raises on its last attempt
            dead = dead_letters(conn, sid) + (1 if attempts >= max_attempts else 0)
        if dead:  # not over a pending handshake (requested), which decides the status itself
            self.set_status(sid, "error", dead_letter_error(dead), only_from=LIVE)
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
