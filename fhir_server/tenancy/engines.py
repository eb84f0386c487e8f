"""A tenant's view of the database: its own schema on the shared PostgreSQL pool, its own SQLite file.

PostgreSQL: one pool for every tenant (200 tenants are not 200 pools). A tenant's engine is a light option
view of the shared engine. Nothing of a tenant stays on a pooled connection after a unit of work:

- A transaction starts with ``BEGIN`` and ``SET LOCAL search_path`` to the tenant's schema alone, in one round
  trip (the driver then sends no BEGIN of its own): the setting ends with the transaction, and with no other
  schema on the path a table missing there is an error, never another hospital's rows.
- The serving engine (``serving=True``, the hospital's own requests and background work) also reads the
  hospital's status in that statement and refuses a transaction of a suspended or deleted hospital.
- Its reads (autocommit at the driver, storage/uow.py) run as the default tenant's do, one statement each and
  no transaction: SQLAlchemy's ``schema_translate_map`` writes every table as "tenant_CODE".name, and the
  status comes from the process's view of it, at most ``status_age`` old (the view the HTTP layer checks
  anyway). A guard scopes, as above, any statement that names bare a table the default search path would
  find; an older view scopes the read too, reading the status afresh.

The platform's own work on a tenant (migrations, password resets, metrics) uses an engine without status.

SQLite: one database file per tenant, beside the default one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

import psycopg
from sqlalchemy import Engine, event
from sqlalchemy.engine import Connection, ExceptionContext, ExecutionContext

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


class StatusView(Protocol):
    """A process's recent reads of the hospitals' status (tenancy/store.py TenantStore)."""

    def seen(self, code: str, max_age: float) -> tuple[TenantStatus | None] | None: ...

    def note(self, code: str, status: TenantStatus | None) -> None: ...


def tenant_engine(base: Engine, settings: Settings, tenant: str, *, serving: bool = False,
                  view: StatusView | None = None, status_age: float = 0.0) -> Engine:
    """``base``: the default tenant's engine (the shared pool on PostgreSQL). ``serving``: the engine of the
    hospital's own requests and background work (its status checked per transaction on PostgreSQL).
    ``view`` and ``status_age`` (serving only): reads take the hospital's status from ``view`` when it is at
    most ``status_age`` seconds old and run as single schema-qualified statements, no transaction at all."""
    if tenant == DEFAULT:
        return base
    if base.dialect.name == "sqlite":
        from fhir_server.storage.database import sqlite_engine

        file_settings = settings.model_copy(update={"database_url": f"sqlite:///{sqlite_file(settings, tenant)}"})
        return sqlite_engine(file_settings).execution_options(**{TENANT: tenant})
    schema = schema_name(tenant)
    qualified = serving and view is not None and status_age > 0
    options: dict[str, Any] = {TENANT: tenant, TENANT_SCHEMA: schema}
    if qualified:
        # Every table of SQLAlchemy statements is written "tenant_CODE".name; the guard below scopes the rest.
        options["schema_translate_map"] = {None: schema}
    engine = base.execution_options(**options)

    # The code is [a-z0-9-] (model.CODE): safe as a literal, so the whole start of a transaction is one
    # simple-protocol statement. set_config(..., true) is SET LOCAL; the status comes back with it.
    status_of = f"(SELECT status FROM {PLATFORM_SCHEMA}.tenant WHERE code = '{tenant}')" if serving else "NULL"
    start = f"""SELECT set_config('search_path', '"{schema}"', true), {status_of}"""

    def scope(conn: Connection) -> None:
        """The transaction on the tenant's schema alone, and (serving) its status checked in the same trip."""
        conn.info[UNSCOPED] = False
        row = _begin_with(conn.connection.dbapi_connection, start)
        if serving:
            status = row[1] if row is not None else None
            if view is not None:
                view.note(tenant, TenantStatus(status) if status is not None else None)
            if status not in SERVED:
                raise TenantUnavailable(tenant, status)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        if autocommit and view is not None and qualified:
            known = view.seen(tenant, status_age)
            if known is not None:  # fresh enough: no statement of ours at all
                status = known[0].value if known[0] is not None else None
                if status not in SERVED:
                    raise TenantUnavailable(tenant, status)
                conn.info[UNSCOPED] = True
                return
        scope(conn)

    if qualified:
        names = _Unqualified()

        @event.listens_for(engine, "before_cursor_execute")
        def _guard(conn: Connection, _cursor: Any, statement: str, _parameters: Any,
                   context: ExecutionContext | None, _many: bool) -> None:
            # The guard: a statement naming, unqualified, a table the default search_path would find (the
            # default tenant's) never runs outside the tenant's schema: its transaction is scoped first.
            if conn.info.get(UNSCOPED) and not names.qualified(conn, statement, context):
                scope(conn)

        @event.listens_for(engine, "handle_error")
        def _gone(context: ExceptionContext) -> None:
            # A hospital deleted (its schema dropped) or suspended since this process's view of it: its status,
            # not a missing table, is the answer. No transaction is open, so the connection can still ask.
            conn = context.connection
            sqlstate = getattr(context.original_exception, "sqlstate", None)
            if conn is None or sqlstate not in MISSING or not conn.info.get(UNSCOPED) or conn.invalidated:
                return
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(f"SELECT status FROM {PLATFORM_SCHEMA}.tenant WHERE code = '{tenant}'")
                row = cursor.fetchone()
            finally:
                cursor.close()
            status = row[0] if row is not None else None
            if view is not None:
                view.note(tenant, TenantStatus(status) if status is not None else None)
            if status not in SERVED:
                raise TenantUnavailable(tenant, status) from context.original_exception

    return engine


MISSING = {"42P01", "3F000"}  # undefined_table, invalid_schema_name


def _begin_with(dbapi_conn: Any, sql: str) -> tuple[Any, ...] | None:
    """``BEGIN`` and ``sql`` in one simple-protocol round trip; the first row of ``sql``. The driver then finds
    the transaction open and sends no BEGIN of its own (a read, autocommit at the driver, sends none anyway);
    its COMMIT or ROLLBACK follows as usual, as the server is in a transaction."""
    result = dbapi_conn.pgconn.exec_(f"BEGIN; {sql}".encode())
    if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
        raise psycopg.errors.error_from_result(result, encoding=dbapi_conn.info.encoding)
    if result.ntuples == 0:
        return None
    return tuple(None if (v := result.get_value(0, i)) is None else v.decode() for i in range(result.nfields))


UNSCOPED = "fhir_tenant_unscoped"  # connection info: this transaction runs with no search_path of the tenant's
_VERDICT = "_fhir_tenant_qualified"  # on a compiled statement (shared by every tenant): its verdict


class _Unqualified:
    """Which statements name a relation of the default search_path (the default tenant's public schema) bare.
    The names come from the database itself once per tenant engine: every table, view and sequence an
    unqualified name could reach. Text SQL is judged the same way; anything in doubt is scoped (slower, safe)."""

    def __init__(self) -> None:
        self.pattern: re.Pattern[str] | None = None

    def qualified(self, conn: Connection, statement: str, context: ExecutionContext | None) -> bool:
        compiled = getattr(context, "compiled", None)
        if compiled is not None:
            verdict = getattr(compiled, _VERDICT, None)
            if verdict is None:
                verdict = self._judge(conn, compiled.string)
                setattr(compiled, _VERDICT, verdict)
            return bool(verdict)
        return self._judge(conn, statement)

    def _judge(self, conn: Connection, sql: str) -> bool:
        if self.pattern is None:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute("SELECT c.relname FROM pg_class c WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
                               "AND c.relnamespace = ANY(SELECT s::regnamespace FROM unnest(current_schemas(false)) s)")
                found = sorted({str(r[0]) for r in cursor.fetchall()}, key=len, reverse=True)
            finally:
                cursor.close()
            # A name not after a dot (a qualified one is "schema".name) and not part of a longer identifier.
            alternatives = "|".join(map(re.escape, found or ["\0"]))
            self.pattern = re.compile(rf'(?<![\w.$"])"?(?:{alternatives})"?(?![\w$])', re.IGNORECASE)
        return self.pattern.search(sql) is None


def is_tenant_engine(engine: Engine | Connection) -> bool:
    return TENANT_SCHEMA in engine.get_execution_options()


def tenant_of(engine: Engine | Connection) -> str:
    return str(engine.get_execution_options().get(TENANT, DEFAULT))
