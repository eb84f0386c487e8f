"""The row an outbox lane is delivering, as its handler sees it: its batch (``current_batch``), its attempt
(``count_attempt`` as the request leaves, ``last_attempt``, ``attempt_number``). See outbox.py."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fhir_server.storage.outbox import OutboxDispatcher


class Batch:
    """The rows of one partition claimed together (outbox order), delivered one after another by one lane:
    ``cache`` is the handler's, for what they share (read after the claim, so no older than any of them)."""

    def __init__(self) -> None:
        self.items: list[Claimed] = []
        self.cache: dict[str, Any] = {}


@dataclass(frozen=True)
class Claimed:
    pk: int
    topic: str
    key: str
    payload: dict[str, Any]
    attempts: int  # real attempts before this one
    max_attempts: int
    batch: Batch | None = field(default=None, compare=False, repr=False)


# Delivered rows not yet finished in the database: (row, whether its attempt was counted already).
Done = list[tuple[Claimed, bool]]


@dataclass
class _Attempt:
    dispatcher: OutboxDispatcher
    item: Claimed
    done: Done
    counted: bool = False


_CURRENT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("outbox_attempt", default=None)


class LeaseLost(Exception):
    """The row is no longer this dispatcher's (its lease lapsed and another took it): do not send it."""


def count_attempt(_request: object = None) -> None:
    """Record that the row being delivered is being attempted now (once per delivery; a no-op outside one).
    Call it right before the request leaves; it fits httpx's ``event_hooks={"request": [...]}``. Raises
    LeaseLost (so nothing is sent) when another dispatcher holds the row now."""
    attempt = _CURRENT.get()
    if attempt is None or attempt.counted:
        return
    attempt.counted = True
    if not attempt.dispatcher._write(attempt.done, attempt.item.pk, {"attempts": attempt.item.attempts + 1}):
        raise LeaseLost(f"outbox row {attempt.item.pk} is held by another dispatcher now")


def current_batch() -> Batch | None:
    """The batch of the row being delivered (None outside a delivery)."""
    attempt = _CURRENT.get()
    return attempt.item.batch if attempt is not None else None


def last_attempt() -> bool:
    """Whether the row being delivered is on its last attempt (counted: the dispatcher dead-letters it if
    this one fails). False outside a delivery."""
    attempt = _CURRENT.get()
    if attempt is None:
        return False
    return attempt.item.attempts + 1 >= attempt.item.max_attempts


def attempt_number() -> tuple[int, int]:
    """(this attempt's number, max_attempts) of the row being delivered; (1, 1) outside a delivery."""
    attempt = _CURRENT.get()
    return (attempt.item.attempts + 1, attempt.item.max_attempts) if attempt is not None else (1, 1)
