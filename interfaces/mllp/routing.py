"""HL7 v2 for many hospitals on one listener (issue 13 item 4): a message goes to the tenant its MSH-6
(receiving facility), and MSH-5 (receiving application) where a route names one, say. Routes are the
platform's table (``fhir-server hl7 routes add --tenant T --facility LAB1``). With no route at all every
message goes to the default tenant, as on a single-hospital install. A message no route takes, or one for a
suspended hospital, is answered AR with an ERR naming MSH-6 and kept in the default tenant's message store
(nothing is lost: it can be replayed once routed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from fhir_server.tenancy.model import DEFAULT, TenantStatus, check_code
from fhir_server.tenancy.tables import hl7_route_table, platform_engine
from mappings.hl7v2.errors import TABLE_VALUE_NOT_FOUND, ErrorDetail

if TYPE_CHECKING:
    from fhir_server.config import Settings
    from fhir_server.rest.server import FhirServer
    from fhir_server.tenancy.stacks import Tenants
    from interfaces.mllp.pipeline import Hl7Pipeline

ROUTES_TTL = 2.0  # seconds a listener keeps the route table before reading it again


def receiver_of(raw: bytes) -> tuple[str, str] | None:
    """(MSH-5, MSH-6) namespace ids of a frame, read without parsing the message; None without an MSH."""
    head = raw[:2048].decode("latin-1")
    start = head.find("MSH")
    if start < 0 or len(head) < start + 8:
        return None
    segment = head[start:].split("\r", 1)[0].split("\n", 1)[0]
    sep = segment[3]
    component = head[start + 4] if len(head) > start + 4 else "^"
    fields = segment.split(sep)  # fields[n - 1] is MSH-n (MSH-1 is the separator itself)

    def field(n: int) -> str:
        return fields[n - 1].split(component, 1)[0].strip() if len(fields) >= n else ""

    return field(5), field(6)


@dataclass(frozen=True)
class Route:
    facility: str
    application: str  # "" : any receiving application
    tenant: str


def every_tenant(settings: Settings, server: FhirServer) -> Tenants | None:
    """The hospitals a ``fhir-server mllp`` process serves: all of them, routed (None with --tenant: its own)."""
    if settings.tenant != DEFAULT:
        return None
    from datetime import timedelta

    from fhir_server.storage.outbox import OutboxDispatcher
    from fhir_server.tenancy.stacks import Tenants, TenantStack

    # Orders a tenant's writes queue go out from its own outbox, delivered by `serve` or a worker.
    outbox = OutboxDispatcher(server.engine, lease=timedelta(seconds=settings.outbox_lease_seconds),
                              lanes=settings.outbox_lanes)
    return Tenants(settings, TenantStack(DEFAULT, server, outbox, None))


class RouteTable:
    def __init__(self, engine: Engine) -> None:
        """``engine``: the default tenant's (the platform's tables live beside it)."""
        self.engine = platform_engine(engine)

    def list(self) -> list[Route]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(hl7_route_table).order_by(hl7_route_table.c.facility,
                                                                  hl7_route_table.c.application))
            return [Route(r.facility, r.application, r.tenant) for r in rows]

    def add(self, tenant: str, facility: str, application: str = "") -> Route:
        if tenant != DEFAULT:
            check_code(tenant)
        dialect: Any = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(hl7_route_table).values(facility=facility, application=application, tenant=tenant)
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["facility", "application"],
                                                    set_={"tenant": tenant}))
        return Route(facility, application, tenant)

    def remove(self, facility: str, application: str = "") -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(delete(hl7_route_table).where(hl7_route_table.c.facility == facility,
                                                              hl7_route_table.c.application == application))
        return bool(done.rowcount)


class Router:
    """Which tenant's pipeline takes a frame (``lane``), or the AR detail refusing it."""

    def __init__(self, tenants: Tenants, lane_of: Callable[[str], Any]) -> None:
        self.tenants = tenants
        self.table = RouteTable(tenants.default.fhir.engine)
        self.lane_of = lane_of  # tenant code -> its (pipeline, committer)
        self._routes: dict[tuple[str, str], str] = {}
        self._read = -ROUTES_TTL
        self._lock = threading.Lock()

    def _current(self) -> dict[tuple[str, str], str]:
        with self._lock:
            if time.monotonic() - self._read >= ROUTES_TTL:
                self._routes = {(r.facility, r.application): r.tenant for r in self.table.list()}
                self._read = time.monotonic()
            return self._routes

    def tenant_for(self, raw: bytes) -> str | ErrorDetail:
        routes = self._current()
        if not routes:
            return DEFAULT  # one hospital: no routing at all
        receiver = receiver_of(raw)
        application, facility = receiver if receiver is not None else ("", "")
        tenant = routes.get((facility, application)) or routes.get((facility, ""))
        if tenant is None:
            return ErrorDetail(TABLE_VALUE_NOT_FOUND, f"MSH-6 (receiving facility) {facility!r} is not routed to "
                               "any hospital on this server", "MSH", 1, 6)
        # Read per message (not the HTTP layer's second-old view): a suspended hospital's message gets its AR.
        status = self.tenants.store.status(tenant)
        if status != TenantStatus.ACTIVE:
            return ErrorDetail(TABLE_VALUE_NOT_FOUND, f"MSH-6 (receiving facility) {facility!r}: its hospital is "
                               f"{status.value.lower() if status else 'unknown'} on this server", "MSH", 1, 6)
        return tenant

    def lane(self, raw: bytes, default: Hl7Pipeline) -> tuple[Any, list[str] | None]:
        """(the lane to process the frame in, None) or (None, the AR ACKs already stored and to send)."""
        routed = self.tenant_for(raw)
        if isinstance(routed, ErrorDetail):
            return None, default.refuse(raw, routed).immediate
        return self.lane_of(routed), None
