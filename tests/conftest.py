"""Test fixtures: every storage/REST test runs on SQLite and on a real PostgreSQL, through a real HTTP server.

PostgreSQL comes from FHIR_TEST_POSTGRES_URL (scripts/test.sh starts one). Without it the PostgreSQL half
is skipped locally, but fails under CI=true so CI can never pass without it.
"""

from __future__ import annotations

import itertools
import os
import random
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


# The deadline for a subprocess (fhir-server serve, mllp, worker, a simulator) to answer: a cold Python process
# importing fastapi, fhir.resources and celery and migrating its database takes a minute or more when the
# suite's workers and other processes share the 2 cores. Only a process that hangs reaches it.
PROCESS_START_TIMEOUT = 180.0


def shared_dir() -> Path:
    """The project's shared folder (FHIR definitions, the NRCeS IG, samples): ``FHIR_TEST_SHARED``, else
    ``../shared`` beside this checkout, else beside the checkout this one was cloned from (a CI clone in /tmp)."""
    if os.environ.get("FHIR_TEST_SHARED"):
        return Path(os.environ["FHIR_TEST_SHARED"])
    here = Path(__file__).resolve().parents[2] / "shared"
    if here.is_dir():
        return here
    import subprocess

    origin = subprocess.run(["git", "config", "--get", "remote.origin.url"], cwd=Path(__file__).parent,
                            capture_output=True, text=True, check=False).stdout.strip()
    beside_origin = Path(origin).parent / "shared" if origin.startswith("/") else here
    return beside_origin if beside_origin.is_dir() else here


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


def xdist_worker_index() -> int:
    """0, 1, ... for pytest-xdist's workers gw0, gw1, ...; 0 when the suite runs in one process."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) if name[2:].isdigit() else 0


# Ports for the servers tests start come from below the kernel's ephemeral range, one slice per xdist worker:
# a port picked with bind(0) and closed could be taken, before the test's server (often a subprocess) binds
# it, by another worker's bind(0) or by any outgoing connection's source port.
_PORT_FLOOR, _PORT_SLICE = 15000, 2000
_port_cursor = itertools.count(random.randrange(_PORT_SLICE))  # two sessions at once rarely walk in step


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def uvicorn_config(app: Any, **kw: Any) -> uvicorn.Config:
    """A test server's uvicorn settings: keep-alive far longer than any pause between a test's requests (a
    CLI subprocess run between two requests), so the server never closes a connection the client is reusing."""
    return uvicorn.Config(app, timeout_keep_alive=300, **kw)


def _free_port() -> int:
    """A loopback port that nothing listens on, kept for this worker's own servers."""
    low = _PORT_FLOOR + xdist_worker_index() * _PORT_SLICE
    if low + _PORT_SLICE <= _ephemeral_floor():
        for _ in range(_PORT_SLICE):
            port = low + next(_port_cursor) % _PORT_SLICE
            if _bindable(port):
                return port
    with socket.socket() as s:  # no room below the ephemeral range (many workers, an unusual kernel setting)
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def live(backend: Backend) -> Iterator[LiveServer]:
    """A real uvicorn server on loopback, in this process, for one backend (a tenant's: its /fhir/{tenant})."""
    app, fhir, fhir_path = backend.server_app()
    port = _free_port()
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning",
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


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``, scripts/test.sh) each test file is a group per database
    (``file[sqlite]``, ``file[postgresql]``), so its module fixtures are built once on one worker. pytest runs
    every SQLite test before every PostgreSQL one (``backend`` is a parametrized session fixture), and the
    groups go out in that order: a worker changes database once, not at every file. A test's own
    ``xdist_group`` mark wins."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            name = item.nodeid.split("::", 1)[0]
            callspec = getattr(item, "callspec", None)
            if callspec is not None and "backend" in callspec.params:
                name += f"[{callspec.params['backend']}]"
            item.add_marker(pytest.mark.xdist_group(name))


def pytest_collection_finish(session: pytest.Session) -> None:
    """pytest-xdist's loadgroup puts the group into each node id ("...::test@group"); if a pytest or xdist
    release stops doing so, the groups above are silently ignored: fail the run instead."""
    if os.environ.get("PYTEST_XDIST_WORKER") and session.config.getvalue("loadgroup"):
        ungrouped = [item.nodeid for item in session.items if "@" not in item.nodeid]
        if ungrouped:
            raise pytest.UsageError(f"--dist loadgroup left {len(ungrouped)} tests ungrouped, e.g. {ungrouped[0]}")
