"""A tenant's view of the database: its own schema on the shared PostgreSQL pool, its own SQLite file.

PostgreSQL: one pool for every tenant (200 tenants are not 200 pools). A tenant's engine is a light
option view of the shared engine whose every transaction starts with ``SET LOCAL search_path`` to the
tenant's schema alone: the setting ends with the transaction, so a pooled connection never carries one
tenant's schema into the next request, and with no other schema on the path a table missing there is an
error, never another hospital's rows. Autocommit (no transaction) is refused on a tenant's engine for
the same reason.

SQLite: one database file per tenant, beside the default one.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.engine import Connection

from fhir_server.config import Settings
from fhir_server.tenancy.model import DEFAULT, schema_name

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


def tenant_engine(base: Engine, settings: Settings, tenant: str) -> Engine:
    """``base``: the default tenant's engine (the shared pool on PostgreSQL)."""
    if tenant == DEFAULT:
        return base
    if base.dialect.name == "sqlite":
        from fhir_server.storage.database import sqlite_engine

        file_settings = settings.model_copy(update={"database_url": f"sqlite:///{sqlite_file(settings, tenant)}"})
        return sqlite_engine(file_settings).execution_options(**{TENANT: tenant})
    schema = schema_name(tenant)
    engine = base.execution_options(**{TENANT: tenant, TENANT_SCHEMA: schema})

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            raise RuntimeError("a tenant's statements run inside a transaction (SET LOCAL search_path)")
        conn.exec_driver_sql(f'SET LOCAL search_path TO "{schema}"')

    return engine


def is_tenant_engine(engine: Engine | Connection) -> bool:
    return TENANT_SCHEMA in engine.get_execution_options()


def tenant_of(engine: Engine | Connection) -> str:
    return str(engine.get_execution_options().get(TENANT, DEFAULT))
