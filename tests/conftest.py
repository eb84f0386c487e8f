"""Test fixtures: every storage/REST test runs on SQLite and on a real PostgreSQL, through a real HTTP server.

PostgreSQL comes from FHIR_TEST_POSTGRES_URL (scripts/test.sh starts one). Without it the PostgreSQL half
is skipped locally, but fails under CI=true so CI can never pass without it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine, create_engine, text

from fhir_server.api.http_protocol import FhirHttpProtocol
from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from fhir_server.storage.database import make_engine
from fhir_server.storage.migrate import upgrade
from fhir_server.storage.models import Base

# Test set-up and checks that act as the server itself (not as any token holder), visibly.
SYSTEM = as_system("test set-up and checks")

BACKENDS = ["sqlite", "postgresql"]
# Modules that also run in a non-default tenant (issue 13) take these with
# ``pytestmark = pytest.mark.parametrize("backend", TENANT_BACKENDS, indirect=True)``: the same tests, on a
# tenant's own PostgreSQL schema, through its /fhir/{tenant} URLs.
TENANT = "hosp-t"
TENANT_BACKENDS = [*BACKENDS, "postgresql-tenant"]


def wait_until(predicate, timeout: float = 10.0, message: str = "condition") -> None:  # type: ignore[no-untyped-def]
    """Poll with a deadline (tests never sleep a fixed time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {message}")


def _postgres_admin_url() -> str | None:
    url = os.environ.get("FHIR_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("FHIR_TEST_POSTGRES_URL is not set: CI must run the PostgreSQL half (scripts/test.sh)")
        return None
    return url


@dataclass
class Backend:
    name: str
    settings: Settings  # the tenant's own (settings.tenant) when the backend is a tenant's
    engine: Engine
    base_settings: Settings | None = None  # a tenant's backend: the platform's (default tenant's) settings
    base_engine: Engine | None = None

    @property
    def tenant(self) -> str:
        return self.settings.tenant

    def server_app(self, settings: Settings | None = None) -> tuple[Any, FhirServer, str]:
        """(the app, the FhirServer of this backend's tenant, the FHIR path of that tenant) as ``serve``
        builds them: a tenant's server is the app's stack for it, reached under /fhir/{tenant}."""
        settings = settings or self.settings
        if self.base_engine is None:
            fhir = FhirServer(settings, self.engine)
            return create_app(settings, fhir), fhir, "/fhir"
        platform = self.base_settings or settings
        base_settings = settings.model_copy(update={"tenant": "default", "binary_store_url": platform.binary_store_url,
                                                    "broker_queue": platform.broker_queue})
        app = create_app(base_settings, FhirServer(base_settings, self.base_engine))
        return app, app.state.tenants.stack(self.tenant).fhir, f"/fhir/{self.tenant}"

    def truncate(self) -> None:
        with self.engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())


def make_backend(name: str, tmp: Path) -> Iterator[Backend]:
    if name == "sqlite":
        # Audit off here: queued AuditEvents would land in the next test's emptied store (test_audit*.py turn
        # it on for their own servers).
        settings = Settings(database_url=f"sqlite:///{tmp / 'fhir.sqlite3'}", outbox_dispatcher=False,
                            audit_enabled=False,
                            binary_store_url=f"file://{tmp / 'binary'}")
        engine = make_engine(settings)
        upgrade(engine)
        yield Backend(name, settings, engine)
        engine.dispose()
        return
    if name == "postgresql-tenant":
        for base in make_backend("postgresql", tmp):
            from fhir_server.tenancy.engines import tenant_engine, tenant_settings
            from fhir_server.tenancy.store import TenantStore

            TenantStore(base.engine, base.settings).create(TENANT, "Tenant under test")
            yield Backend(name, tenant_settings(base.settings, TENANT),
                          tenant_engine(base.engine, base.settings, TENANT), base.settings, base.engine)
        return
    admin_url = _postgres_admin_url()
    if admin_url is None:
        pytest.skip("PostgreSQL not configured (set FHIR_TEST_POSTGRES_URL or run scripts/test.sh)")
    dbname = f"fhir_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{dbname}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{dbname}"
    settings = Settings(database_url=url, outbox_dispatcher=False, db_pool_size=20, audit_enabled=False,
                        binary_store_url=f"file://{tmp / 'binary'}")
    engine = make_engine(settings)
    upgrade(engine)
    try:
        yield Backend(name, settings, engine)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    yield from make_backend(request.param, tmp_path_factory.mktemp(request.param))


@dataclass
class LiveServer:
    url: str  # FHIR base, e.g. http://127.0.0.1:12345/fhir
    fhir: FhirServer
    backend: Backend
    http: httpx.Client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def live(backend: Backend) -> Iterator[LiveServer]:
    """A real uvicorn server on loopback, in this process, for one backend (a tenant's: its /fhir/{tenant})."""
    app, fhir, fhir_path = backend.server_app()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", http=FhirHttpProtocol))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "uvicorn to start")
    base = f"http://127.0.0.1:{port}{fhir_path}"
    with httpx.Client(base_url=base + "/", timeout=60, headers={"Accept": "application/fhir+json"}) as http:
        yield LiveServer(base, fhir, backend, http)
    server.should_exit = True
    thread.join(timeout=20)


@pytest.fixture
def api(live: LiveServer) -> LiveServer:
    """The live server with an empty store."""
    live.backend.truncate()
    return live
