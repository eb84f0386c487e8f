"""Engine set-up for the two supported stores: SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.pool import StaticPool

from fhir_server.config import Settings


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_engine(settings: Settings) -> Engine:
    """The engine of ``settings.tenant`` (the default tenant's unless a command was given --tenant)."""
    if settings.tenant != "default":
        from fhir_server.tenancy.engines import tenant_engine

        return tenant_engine(make_engine(settings.model_copy(update={"tenant": "default"})), settings,
                             settings.tenant)
    url = settings.database_url
    if url.startswith("sqlite"):
        return sqlite_engine(settings)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size * 2,
        pool_recycle=1800,  # no pre-ping: it costs a round trip per request; dropped connections retry (uow)
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        # psycopg prepares a statement after 5 runs and PostgreSQL then may switch to a generic plan, which
        # ignores the actual search values (hashes, dates): 15 ms searches became 200 ms. Plan each run.
        connect_args={"options": _pg_options(settings)},
    )


def _pg_options(settings: Settings) -> str:
    options = ["-c plan_cache_mode=force_custom_plan"]
    if settings.db_parallel_workers_per_gather >= 0:
        options.append(f"-c max_parallel_workers_per_gather={int(settings.db_parallel_workers_per_gather)}")
    return " ".join(options)


def sqlite_engine(settings: Settings) -> Engine:
    path = settings.sqlite_path()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(settings.database_url, pool_size=settings.db_pool_size, max_overflow=20,
                               json_serializer=_json_dumps, json_deserializer=orjson.loads,
                               connect_args={"check_same_thread": False, "timeout": 60})
    else:  # one shared in-memory database
        engine = create_engine("sqlite://", poolclass=StaticPool,
                               json_serializer=_json_dumps, json_deserializer=orjson.loads,
                               connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so BEGIN is ours (see _on_begin).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=60000",
                       "foreign_keys=ON", "cache_size=-65536"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the database lock up front: no lost updates, no upgrade deadlocks between
        # two readers turning writer; readers still run concurrently under WAL.
        write = conn.get_execution_options().get("fhir_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def lock_key(text: str) -> int:
    """A signed 64-bit key for pg_advisory_xact_lock, stable across processes."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)
