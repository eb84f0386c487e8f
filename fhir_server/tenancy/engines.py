"""A tenant's view of the database: its own schema on the shared PostgreSQL pool, its own SQLite file.

PostgreSQL: one pool for every tenant (200 tenants are not 200 pools). A tenant's engine is a light
option view of the shared engine whose every transaction starts with ``SET LOCAL search_path`` to the
tenant's schema alone: the setting ends with the transaction, so a pooled connection never carries one
tenant's schema into the next request, and with no other schema on the path a table missing there is an
error, never another hospital's rows. On an autocommit connection (the reads of storage/uow.py) the engine
sends BEGIN itself, in the same round trip: a tenant's statements always run in a transaction.

The engine that serves a hospital's requests (``serving=True``) also reads the hospital's status in that
same statement and refuses a transaction of a suspended or deleted hospital: suspension holds at once in
every process, at no extra round trip, so the HTTP layer may use a status a second old (api/tenants.py).
The platform's own work on a tenant (migrations, password resets, metrics) uses an engine without it.

SQLite: one database file per tenant, beside the default one.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.engine import Connection

from fhir_server.config import Settings
from fhir_server.errors import FORBIDDEN, FhirError
from fhir_server.tenancy.model import DEFAULT, PLATFORM_SCHEMA, TenantStatus, schema_name

TENANT = "fhir_tenant"  # execution option: the tenant code of a non-default tenant's engine
TENANT_SCHEMA = "fhir_tenant_schema"  # execution option carried by a tenant's PostgreSQL engine


def sqlite_file(settings: Settings, tenant: str) -> Path:
    path = settings.sqlite_path()
    if path is None:
        raise ValueError("tenants on SQLite need a database file (FHIR_DATABASE_URL=sqlite:///path)")
    return path.with_name(f"{path.stem}.{tenant}{path.suffix or '.sqlite3'}")


def tenant_settings(settings: Settings, tenant: str) -> Settings:
    """The settings a tenant's server runs with: the same database URL (the platform's; the tenant's schema
    or file derives from it), its own folder or prefix in the Binary store."""
    if settings.tenant == tenant:  # already its own
        return settings
    store, _, query = settings.binary_store_url.partition("?")
    if tenant != DEFAULT:
        store = f"{store.rstrip('/')}/tenant-{tenant}"
    update = {"tenant": tenant, "binary_store_url": store + (f"?{query}" if query else "")}
    if tenant != DEFAULT:  # its celery tasks carry its own jobs' ids: a worker started with --tenant takes them
        update["broker_queue"] = f"{settings.broker_queue}.{tenant}"
    return settings.model_copy(update=update)


# A transaction may run while its hospital is being created (migrations) or is active; not otherwise.
SERVED = (TenantStatus.ACTIVE.value, TenantStatus.PENDING.value)


class TenantUnavailable(FhirError):
    """A suspended or deleted hospital's transaction, refused before any of its rows are read."""

    def __init__(self, tenant: str, status: str | None) -> None:
        state = "suspended" if status == TenantStatus.SUSPENDED.value else "not served"
        super().__init__(403, FORBIDDEN, f"Hospital {tenant} is {state} on this server")
        self.tenant = tenant


def tenant_engine(base: Engine, settings: Settings, tenant: str, *, serving: bool = False) -> Engine:
    """``base``: the default tenant's engine (the shared pool on PostgreSQL). ``serving``: the engine of the
    hospital's own requests and background work (its status checked per transaction on PostgreSQL)."""
    if tenant == DEFAULT:
        return base
    if base.dialect.name == "sqlite":
        from fhir_server.storage.database import sqlite_engine

        file_settings = settings.model_copy(update={"database_url": f"sqlite:///{sqlite_file(settings, tenant)}"})
        return sqlite_engine(file_settings).execution_options(**{TENANT: tenant})
    schema = schema_name(tenant)
    engine = base.execution_options(**{TENANT: tenant, TENANT_SCHEMA: schema})

    # The code is [a-z0-9-] (model.CODE): safe as a literal, so the whole start of a transaction is one
    # simple-protocol statement. set_config(..., true) is SET LOCAL; the status comes back with it.
    status_of = f"(SELECT status FROM {PLATFORM_SCHEMA}.tenant WHERE code = '{tenant}')" if serving else "NULL"
    start = f"""SELECT set_config('search_path', '"{schema}"', true), {status_of}"""

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            # A read (storage/uow.py): the driver sends no BEGIN of its own, so ours goes in the same round
            # trip; its COMMIT (or ROLLBACK) still follows, as the server is in a transaction.
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(f"BEGIN; {start}")
                cursor.nextset()
                row = cursor.fetchone()
            finally:
                cursor.close()
        else:
            row = conn.exec_driver_sql(start).first()
        if serving and (row is None or row[1] not in SERVED):
            raise TenantUnavailable(tenant, row[1] if row is not None else None)

    return engine


def is_tenant_engine(engine: Engine | Connection) -> bool:
    return TENANT_SCHEMA in engine.get_execution_options()


def tenant_of(engine: Engine | Connection) -> str:
    return str(engine.get_execution_options().get(TENANT, DEFAULT))
