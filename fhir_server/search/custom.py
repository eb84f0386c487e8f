"""SearchParameter resources stored at runtime join the registry of every server process.

The registry of a server is the core (R4) registry plus every live, non-retired stored SearchParameter
(a stored one may redefine a core code on its base). Which version of the stored set a process has is the
newest ``resource_history.pk`` of type SearchParameter: one index lookup, done at most once a second per
process (``refresh``, from the request path), and at once after this process commits a SearchParameter write.
A new parameter is indexed for resources written after it joined; ``$reindex`` back-fills older ones.
Changing or deleting one drops the index rows of its old definition (unless a core parameter owns the code).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, delete, func, select

from fhir_server.errors import FhirError
from fhir_server.hooks import HookPoint, Hooks, WriteEvent
from fhir_server.search.definition_check import applies_to, check_search_parameter
from fhir_server.search.registry import Registry, core_registry
from fhir_server.search.tables import TABLES
from fhir_server.storage.models import RESOURCE, RESOURCE_HISTORY

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

log = logging.getLogger(__name__)
TYPE = "SearchParameter"


class RuntimeParameters:
    def __init__(self, registry: Registry, engine: Engine, *, check_seconds: float = 1.0) -> None:
        self.registry = registry
        self.engine = engine
        self.check_seconds = check_seconds
        self.loaded: int | None = None  # newest SearchParameter history pk the registry reflects
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def register(self, hooks: Hooks) -> None:
        hooks.register(HookPoint.BEFORE_VALIDATE, self.before_validate)
        hooks.register(HookPoint.BEFORE_COMMIT, self.before_commit)
        hooks.register(HookPoint.AFTER_COMMIT, self.after_commit)

    # --- the write path of SearchParameter resources -----------------------------------------------------

    def before_validate(self, event: WriteEvent, _repo: Repository | None) -> None:
        if event.resource_type == TYPE and event.resource is not None:
            check_search_parameter(event.resource)

    def before_commit(self, event: WriteEvent, repo: Repository | None) -> None:
        if event.resource_type != TYPE or repo is None or event.previous is None or event.previous.content is None:
            return
        old, new = event.previous.content, event.resource or {}
        if all(old.get(k) == new.get(k) for k in ("code", "base", "type", "expression")):
            return
        self._drop_rows(repo, old)

    def after_commit(self, event: WriteEvent, _repo: Repository | None) -> None:
        if event.resource_type == TYPE:
            with self.engine.connect() as conn:
                self.refresh(conn, force=True)

    def _drop_rows(self, repo: Repository, old: dict[str, Any]) -> None:
        code = old.get("code")
        core = core_registry()
        types = [t for base in old.get("base") or [] for t in applies_to(base) if core.get(t, str(code)) is None]
        if not isinstance(code, str) or not types:
            return
        params = [code, f"{code}:identifier", f"{code}:of-type"]
        for table in TABLES.values():
            repo.execute(delete(table).where(table.c.resource_type.in_(types), table.c.param.in_(params)))

    # --- keeping the registry current --------------------------------------------------------------------

    def refresh(self, conn: Connection, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.check_seconds:
            return
        self._checked = now
        h = RESOURCE_HISTORY
        marker = conn.execute(select(func.max(h.c.pk)).where(h.c.resource_type == TYPE)).scalar()
        if marker == self.loaded:
            return
        with self._lock:
            if marker == self.loaded:
                return
            self.registry.replace_with(self.load(conn))
            self.loaded = marker

    def load(self, conn: Connection) -> Registry:
        r = RESOURCE
        registry = core_registry().copy()
        rows = conn.execute(select(r.c.id, r.c.content).where(r.c.resource_type == TYPE, r.c.deleted.is_(False))
                            .order_by(r.c.last_updated, r.c.id))
        for row in rows:
            sp = row.content or {}
            if sp.get("status") == "retired":
                continue
            try:
                check_search_parameter(sp)
            except FhirError:  # stored before checks existed, or by a bulk load: skipped, never fatal
                log.warning("SearchParameter/%s is not usable and stays out of the registry", row.id)
                continue
            registry.add_definition(sp)
        return registry
