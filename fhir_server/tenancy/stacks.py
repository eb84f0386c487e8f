"""One process serving many tenants: each gets its own FhirServer (hooks, registries of its own
SearchParameters and profiles, audit, outbox and background work) over its schema or file, made on the
tenant's first request. Core definitions are shared: a tenant's FhirServer costs ~2 ms and ~40 KB."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from fhir_server.config import Settings
from fhir_server.tenancy.engines import tenant_engine, tenant_settings
from fhir_server.tenancy.model import DEFAULT, TenantStatus
from fhir_server.tenancy.store import TenantStore

if TYPE_CHECKING:
    from fhir_server.jobs.background import Background
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.outbox import OutboxDispatcher

log = logging.getLogger(__name__)
STATUS_AGE = 1.0  # seconds a tenant's status read serves further requests in this process


@dataclass
class TenantStack:
    code: str
    fhir: FhirServer
    outbox: OutboxDispatcher
    background: Background | None
    extras: dict[str, Any] = field(default_factory=dict)  # what the HTTP layer keeps per tenant (SmartAuth)


class Tenants:
    """The tenants one process serves. ``stack(code)`` for a tenant's services; ``status(code)`` per request."""

    def __init__(self, settings: Settings, default: TenantStack) -> None:
        self.settings = settings
        self.store = TenantStore(default.fhir.engine, settings)
        self._status_age = STATUS_AGE if default.fhir.engine.dialect.name == "postgresql" else 0.0
        self._stacks: dict[str, TenantStack] = {DEFAULT: default}
        self._lock = threading.Lock()
        self._running = False
        # Called for each stack as it is made (the HTTP layer adds its authorization server).
        self.on_new: list[Callable[[TenantStack], None]] = []

    @property
    def default(self) -> TenantStack:
        return self._stacks[DEFAULT]

    @property
    def made(self) -> frozenset[str]:
        """The tenants with services in this process already."""
        return frozenset(self._stacks)

    def status(self, code: str) -> TenantStatus | None:
        """Per request. On PostgreSQL up to ``STATUS_AGE`` seconds old: every transaction of a hospital checks
        its status again in the statement that sets its schema (tenancy/engines.py), so an old answer never
        lets a suspended hospital's data out. SQLite has no such check: always read."""
        return self.store.status(code, max_age=self._status_age)

    def seen(self, code: str) -> tuple[TenantStatus | None] | None:
        """``status(code)`` if it needs no database read (the HTTP layer then stays off the thread pool)."""
        return self.store.seen(code, self._status_age)

    def made_stack(self, code: str) -> TenantStack | None:
        return self._stacks.get(code)

    def stack(self, code: str) -> TenantStack:
        found = self._stacks.get(code)
        if found is not None:
            return found
        with self._lock:
            found = self._stacks.get(code)
            if found is None:
                found = self._stacks[code] = self._make(code)
        return found

    def _make(self, code: str) -> TenantStack:
        from fhir_server.jobs.background import Background
        from fhir_server.jobs.topics import install_outbox_topics
        from fhir_server.rest.server import FhirServer
        from fhir_server.storage.outbox import OutboxDispatcher
        from fhir_server.tenancy.limits import install as install_limits

        settings = tenant_settings(self.settings, code)
        # Idle polling (outbox retries, stalled jobs) spread thin: ~10 tenants' worth of polls per interval
        # whatever their number. A commit still wakes its tenant's dispatcher at once (jobs/background.py).
        scale = max(1.0, len(self._stacks) / 10)
        settings = settings.model_copy(update={"outbox_poll_seconds": settings.outbox_poll_seconds * scale,
                                               "job_poll_seconds": settings.job_poll_seconds * scale})
        engine = tenant_engine(self.default.fhir.engine, self.settings, code, serving=True, view=self.store,
                               status_age=self._status_age)
        fhir = FhirServer(settings, engine)
        install_limits(fhir, self.store)  # max patients (and users) as they are reached
        # The default tenant's lanes serve every tenant: FHIR_OUTBOX_LANES threads per process, not per tenant.
        dispatcher = OutboxDispatcher(fhir.engine, lease=timedelta(seconds=settings.outbox_lease_seconds),
                                      lanes=self.default.outbox.pool)
        background = Background(fhir, dispatcher, settings)
        install_outbox_topics(fhir, dispatcher)
        stack = TenantStack(code, fhir, dispatcher, background)
        for hook in self.on_new:
            hook(stack)
        if self._running:
            background.start()
        log.info("tenant %s: services ready in this process", code)
        return stack

    def start(self) -> None:
        """Every active tenant's background work (outbox deliveries and jobs a previous run left wait for no
        request), and that of tenants made later in this process."""
        with self._lock:
            self._running = True
            made = list(self._stacks.values())
        for stack in made:
            if stack.background is not None:
                stack.background.start()
        try:
            tenants = self.store.list()
        except SQLAlchemyError:  # a database without the platform's tables (never migrated): the default alone
            log.warning("tenants: no platform table; serving the default tenant only")
            tenants = []
        for tenant in tenants:
            if tenant.status == TenantStatus.ACTIVE and tenant.code not in self._stacks:
                self.stack(tenant.code)  # started as it is made

    def stop(self) -> None:
        with self._lock:
            self._running = False
            # The default's last: its outbox lanes deliver every tenant's rows until those have stopped.
            stacks = sorted(self._stacks.values(), key=lambda stack: stack.code == DEFAULT)
        for stack in stacks:
            if stack.background is not None:
                stack.background.stop()
            if stack.fhir.audit is not None:  # write the AuditEvents still queued
                stack.fhir.audit.recorder.close()
            if stack.code != DEFAULT and stack.fhir.engine.dialect.name == "sqlite":
                stack.fhir.engine.dispose()  # its own file's pool (PostgreSQL tenants share the default's)
