"""The platform's register of tenants: create (a schema or file at the current migration), list, change status.

Only the platform's administration (the ``tenants`` commands, /platform) uses this; it never reads a
tenant's clinical data.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, text, update

from fhir_server.config import Settings
from fhir_server.errors import CONFLICT, NOT_FOUND, FhirError
from fhir_server.tenancy.engines import sqlite_file, tenant_engine
from fhir_server.tenancy.model import DEFAULT, Tenant, TenantStatus, check_code, schema_name
from fhir_server.tenancy.tables import hl7_route_table, platform_engine, tenant_table

# Status transitions the platform administration may make.
TRANSITIONS = {
    TenantStatus.ACTIVE: {TenantStatus.SUSPENDED},
    TenantStatus.SUSPENDED: {TenantStatus.ACTIVE},
    TenantStatus.PENDING: {TenantStatus.ACTIVE},
}


def _row(row: Any) -> Tenant:
    return Tenant(row.code, row.name, TenantStatus(row.status), row.max_users, row.max_patients, row.created)


class TenantStore:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        """``engine``: the default tenant's (the platform's tables live beside it)."""
        self.base = engine
        self.engine = platform_engine(engine)
        self.settings = settings
        # One statement, no BEGIN/ROLLBACK around it: the per-request status read is one round trip.
        self._reading = self.engine.execution_options(isolation_level="AUTOCOMMIT") \
            if engine.dialect.name == "postgresql" else self.engine
        self._seen: dict[str, tuple[float, TenantStatus | None]] = {}  # code -> (when read, status)

    # --- reading ------------------------------------------------------------------------------------------

    def get(self, code: str) -> Tenant | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(tenant_table).where(tenant_table.c.code == code)).first()
        return _row(row) if row is not None else None

    def require(self, code: str) -> Tenant:
        tenant = self.get(code)
        if tenant is None:
            raise FhirError(404, NOT_FOUND, f"Tenant {code} is not known")
        return tenant

    def list(self) -> list[Tenant]:
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(select(tenant_table).order_by(tenant_table.c.code))]

    def seen(self, code: str, max_age: float) -> tuple[TenantStatus | None] | None:
        """(status,) from this process's last read if younger than ``max_age`` seconds, else None."""
        if code == DEFAULT:
            return (TenantStatus.ACTIVE,)
        seen = self._seen.get(code)
        return (seen[1],) if seen is not None and time.monotonic() - seen[0] < max_age else None

    def status(self, code: str, *, max_age: float = 0.0) -> TenantStatus | None:
        """One indexed row read, or this process's last one if younger than ``max_age`` seconds."""
        known = self.seen(code, max_age)
        if known is not None:
            return known[0]
        now = time.monotonic()
        with self._reading.connect() as conn:
            value = conn.execute(select(tenant_table.c.status).where(tenant_table.c.code == code)).scalar()
        status = TenantStatus(value) if value is not None else None
        self._seen[code] = (now, status)
        return status

    def note(self, code: str, status: TenantStatus | None) -> None:
        """A status read elsewhere just now (a tenant's transaction reads it as it starts: tenancy/engines.py)."""
        self._seen[code] = (time.monotonic(), status)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(tenant_table)).scalar_one())

    # --- changing -----------------------------------------------------------------------------------------

    def create(self, code: str, name: str, *, max_users: int | None = None,
               max_patients: int | None = None) -> tuple[Tenant, float]:
        """A new tenant at the current migration head; returns it and the seconds its creation took."""
        from fhir_server.storage.migrate import upgrade

        check_code(code)
        started = time.perf_counter()
        with self.engine.begin() as conn:
            if conn.execute(select(tenant_table.c.code).where(tenant_table.c.code == code)).first():
                raise FhirError(409, CONFLICT, f"Tenant {code} already exists")
            conn.execute(insert(tenant_table).values(code=code, name=name, status=TenantStatus.PENDING.value,
                                                     max_users=max_users, max_patients=max_patients,
                                                     created=datetime.now(UTC)))
        engine = tenant_engine(self.base, self.settings, code)
        if self.base.dialect.name == "postgresql":
            with self.base.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema_name(code)}"'))
        try:
            upgrade(engine)
        finally:
            if self.base.dialect.name == "sqlite":
                engine.dispose()
        self._set(code, TenantStatus.ACTIVE)
        return self.require(code), time.perf_counter() - started

    def set_status(self, code: str, status: TenantStatus) -> Tenant:
        tenant = self.require(code)
        if status not in TRANSITIONS.get(tenant.status, set()):
            raise FhirError(409, CONFLICT, f"Tenant {code} is {tenant.status.value}: it cannot become {status.value}")
        self._set(code, status)
        return self.require(code)

    def set_limits(self, code: str, *, max_users: int | None, max_patients: int | None) -> Tenant:
        self.require(code)
        with self.engine.begin() as conn:
            conn.execute(update(tenant_table).where(tenant_table.c.code == code)
                         .values(max_users=max_users, max_patients=max_patients))
        return self.require(code)

    def delete(self, code: str) -> Tenant:
        """Drops the tenant's schema or file; the code stays, INACTIVE, so it is never reused by accident."""
        tenant = self.require(code)
        if tenant.status == TenantStatus.INACTIVE:
            return tenant
        self._set(code, TenantStatus.INACTIVE)  # refused from now on, before its data goes
        if self.base.dialect.name == "postgresql":
            with self.base.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema_name(code)}" CASCADE'))
        else:
            path = sqlite_file(self.settings, code)
            for extra in ("", "-wal", "-shm"):
                path.with_name(path.name + extra).unlink(missing_ok=True)
        with self.engine.begin() as conn:
            conn.execute(delete(hl7_route_table).where(hl7_route_table.c.tenant == code))
        return self.require(code)

    def _set(self, code: str, status: TenantStatus) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(tenant_table).where(tenant_table.c.code == code).values(status=status.value))
        self._seen.pop(code, None)
