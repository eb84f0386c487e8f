"""The server's PostgreSQL connections run searches without parallel workers by default (a Gather's start
cost more than the short index walks it split); FHIR_DB_PARALLEL_WORKERS_PER_GATHER sets another number,
-1 leaves the database's own setting."""

from __future__ import annotations

from sqlalchemy import text

from fhir_server.config import Settings
from fhir_server.storage.database import make_engine
from tests.conftest import Backend


def _show(settings: Settings) -> tuple[str, str]:
    """The connection's value and where it came from ('client': the server's connect options)."""
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT setting, source FROM pg_settings "
                                    "WHERE name = 'max_parallel_workers_per_gather'")).one()
            return str(row[0]), str(row[1])
    finally:
        engine.dispose()


def test_parallel_workers_per_gather_setting(backend: Backend) -> None:
    url = backend.settings.database_url
    if backend.name != "postgresql":  # SQLite has no such setting: the server's engine must simply work
        engine = make_engine(Settings(database_url=url, db_parallel_workers_per_gather=2))
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
        finally:
            engine.dispose()
        return
    assert _show(Settings(database_url=url)) == ("0", "client")
    assert _show(Settings(database_url=url, db_parallel_workers_per_gather=1)) == ("1", "client")
    assert _show(Settings(database_url=url, db_parallel_workers_per_gather=-1))[1] != "client"
