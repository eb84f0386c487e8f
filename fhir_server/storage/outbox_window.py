"""Several rows of one partition in flight at once: a lane sends a window of rows together, then reads
their answers (see outbox.py for leases, attempts, partitions).

A topic registered with a ``Windowed`` sender says, per row, what to send (``prepare``) and which rows must
never be in flight together (``Prepared.order``: rows with equal order keys go one after another, in outbox
order; ``None``: no order to keep). A window is the next rows of the partition's queue, up to ``width``,
stopping before a row whose order key is already in it: R4 full-resource notifications are updates of their
focus resource (keep order per focus), a Backport subscription's rows share one key (its event numbers go
in order), R4 id-only notifications have none.

Attempts are counted for the whole window in one statement as it leaves (which also finishes the rows
delivered before it), so a window costs two writes, not two per row; rows another dispatcher took
meanwhile are not sent. A failed row is retried with backoff like any other; the rows after it in the
partition wait for it (handed back due with it), those already sent with it stay delivered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import bindparam, text

from fhir_server.storage.models import OUTBOX
from fhir_server.storage.outbox_attempt import _CURRENT, Claimed, Done, _Attempt

if TYPE_CHECKING:
    from fhir_server.storage.outbox import OutboxDispatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    request: Any  # what the topic's ``send`` takes
    order: str | None  # rows with the same key are never in flight together


class Windowed(Protocol):
    width: int

    def prepare(self, key: str, payload: dict[str, Any]) -> Prepared | None:
        """What to send for the row, or None: nothing to send (it is finished). Raise to retry it."""

    def send(self, requests: list[Any]) -> list[BaseException | None]:
        """Send them all; per request None (delivered) or why not."""

    def sent(self, key: str, payload: dict[str, Any], error: BaseException | None) -> None:
        """After the row's outcome (bookkeeping, e.g. the subscription's status); the attempt is current."""


_WINDOW = text(
    f"UPDATE {OUTBOX.name} SET attempts = CASE WHEN pk IN :a THEN attempts + 1 ELSE attempts + :extra_b END, "
    "status = CASE WHEN pk IN :b THEN status ELSE 'done' END, "
    "last_error = CASE WHEN pk IN :c THEN last_error ELSE NULL END, "
    "lease_owner = CASE WHEN pk IN :d THEN lease_owner ELSE NULL END "
    "WHERE pk IN :pks AND lease_owner = :owner AND status = 'delivering' RETURNING pk"
).bindparams(*(bindparam(name, expanding=True) for name in ("a", "b", "c", "d", "pks")))
_EXTRA = text(f"UPDATE {OUTBOX.name} SET attempts = attempts + 1 WHERE pk IN :pks AND lease_owner = :owner"
              ).bindparams(bindparam("pks", expanding=True))


def count_window(dispatcher: OutboxDispatcher, done: Done, sending: list[int]) -> set[int]:
    """One transaction: count an attempt of each row in ``sending`` and finish the rows in ``done`` (then
    empty it); the rows of ``sending`` this dispatcher still holds."""
    counted = [item.pk for item, was_counted in done if was_counted]
    uncounted = [item.pk for item, was_counted in done if not was_counted]
    with dispatcher.engine.connect() as conn:
        conn.execution_options(fhir_write=True)
        with conn.begin():
            taken = {r[0] for r in conn.execute(_WINDOW, {
                "a": sending, "b": sending, "c": sending, "d": sending, "extra_b": 0,
                "pks": [*sending, *counted, *uncounted], "owner": dispatcher.owner})}
            if uncounted:  # rows finished with no request made: their attempt counts as they finish
                conn.execute(_EXTRA, {"pks": [pk for pk in uncounted if pk in taken], "owner": dispatcher.owner})
    finished = [item.pk for item, _counted in done]
    lost = len(finished) - len(taken.intersection(finished))
    with dispatcher._held.lock:
        dispatcher._held.pks.difference_update(finished)
        dispatcher._held.pks.difference_update(pk for pk in sending if pk not in taken)
    if lost:
        log.warning("outbox: %d row(s) delivered after their lease was lost", lost)
    done.clear()
    return taken


def deliver_window(dispatcher: OutboxDispatcher, key: str, first: Claimed, done: Done,
                   limit: int) -> tuple[int, Claimed | None]:
    """Deliver ``first`` and the rows after it that may go with it (at most ``limit``); (how many were
    delivered, the first row that failed or None). Rows taken from the queue and not in the window go back
    to its front, in order."""
    sender: Windowed = dispatcher.windows[first.topic]
    width = max(1, min(sender.width, limit))
    window: list[tuple[Claimed, _Attempt, Prepared]] = []
    orders: set[str] = set()
    delivered = 0
    failure: tuple[Claimed, _Attempt, BaseException] | None = None
    item: Claimed | None = first
    while item is not None:
        attempt = _Attempt(dispatcher, item, done)
        token = _CURRENT.set(attempt)
        try:
            prepared = sender.prepare(item.key, item.payload)
        except Exception as exc:  # like a failed request: retried with backoff
            failure = (item, attempt, exc)
            break
        finally:
            _CURRENT.reset(token)
        if prepared is None:
            done.append((item, False))
            delivered += 1
        elif prepared.order is not None and prepared.order in orders:
            dispatcher._put_back(key, item)  # in flight already: the next window takes it
            break
        else:
            window.append((item, attempt, prepared))
            if prepared.order is not None:
                orders.add(prepared.order)
        if len(window) >= width or delivered + len(window) >= limit:
            break
        item = dispatcher._next_of(key, first.topic)
    if window:
        try:
            taken = count_window(dispatcher, done, [i.pk for i, _a, _p in window])
        except BaseException:  # nothing sent: the window goes back to the queue (the lane hands it back)
            for i, _a, _p in reversed(window):
                dispatcher._put_back(key, i)
            raise
        lost = [i for i, _a, _p in window if i.pk not in taken]
        for i in lost:
            log.warning("outbox %s %s: lease lost before the request, left to its new holder", i.topic, i.key)
        window = [w for w in window if w[0].pk in taken]
        for _i, attempt, _p in window:
            attempt.counted = True
        try:
            errors = sender.send([p.request for _i, _a, p in window])
        except Exception as exc:  # the sender itself failed: every row of the window is retried
            errors = [exc] * len(window)
        for (i, attempt, _p), error in zip(window, errors, strict=True):
            token = _CURRENT.set(attempt)
            try:
                sender.sent(i.key, i.payload, error)
            except Exception:
                log.exception("outbox %s %s: bookkeeping after the request failed", i.topic, i.key)
            finally:
                _CURRENT.reset(token)
            if error is None:
                done.append((i, True))
                delivered += 1
            else:
                dispatcher._failed(i, done, error)
                failure = failure or (i, attempt, error)
    if failure is not None and failure[0].pk not in {i.pk for i, _a, _p in window}:
        dispatcher._failed(failure[0], done, failure[2])  # failed before it was sent (prepare)
    return delivered, failure[0] if failure is not None else None

