"""Typed hook points around every write, where audit, subscriptions, indexing and hospital rules attach.

- ``BEFORE_VALIDATE``: the incoming resource may be normalised or rejected (raise FhirError).
- ``BEFORE_COMMIT``: runs inside the write's own transaction, after the version row is written: index
  rows, outbox entries and audit rows written here commit (or roll back) with the change.
- ``AFTER_COMMIT``: runs once the transaction has committed; failures here are logged, never undo a write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository, Version

log = logging.getLogger(__name__)


class HookPoint(StrEnum):
    BEFORE_VALIDATE = "before-validate"
    BEFORE_COMMIT = "before-commit"
    AFTER_COMMIT = "after-commit"


@dataclass
class WriteEvent:
    interaction: str  # create | update | patch | delete
    resource_type: str
    resource_id: str | None
    resource: dict[str, Any] | None  # the new content (None for delete)
    previous: Version | None = None  # the version replaced, if any
    version: Version | None = None  # the version written (set before BEFORE_COMMIT)


Hook = Callable[[WriteEvent, "Repository | None"], None]


class Hooks:
    def __init__(self) -> None:
        self._hooks: dict[HookPoint, list[Hook]] = {p: [] for p in HookPoint}

    def register(self, point: HookPoint, hook: Hook, *, first: bool = False) -> Hook:
        """``first``: run before the hooks already registered (subscriptions match a deletion against the
        search index before the indexer removes the resource's rows)."""
        if first:
            self._hooks[point].insert(0, hook)
        else:
            self._hooks[point].append(hook)
        return hook

    def unregister(self, point: HookPoint, hook: Hook) -> None:
        self._hooks[point].remove(hook)

    def run(self, point: HookPoint, event: WriteEvent, repo: Repository | None) -> None:
        for hook in self._hooks[point]:
            hook(event, repo)

    def run_after_commit(self, events: list[WriteEvent]) -> None:
        for event in events:
            for hook in self._hooks[HookPoint.AFTER_COMMIT]:
                try:
                    hook(event, None)
                except Exception:  # after commit nothing may undo the write; log and go on
                    log.exception("after-commit hook %s failed", getattr(hook, "__name__", hook))
