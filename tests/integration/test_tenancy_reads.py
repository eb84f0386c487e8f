"""A hospital's reads on PostgreSQL (issue 13 item 7): one schema-qualified statement each, like the default
tenant's, with nothing read from another schema; SQL that names a table bare still runs in the hospital's
schema alone; suspension and deletion still refuse (tenancy/engines.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Connection

from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.rest.server import FhirServer
from fhir_server.storage.repository import Repository
from fhir_server.tenancy.engines import tenant_engine, tenant_settings
from fhir_server.tenancy.model import TenantStatus
from fhir_server.tenancy.store import TenantStore
from tests.conftest import SYSTEM, Backend, wait_until

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

CODE = "rd-a"
JSON = {"content-type": "application/fhir+json"}


@dataclass
class Statement:
    sql: str
    in_transaction: bool  # the server's state as the statement ran


@dataclass
class Hospital:
    default: FhirServer
    tenant: FhirServer
    view: TenantStore  # the serving process's view of the statuses
    other: TenantStore  # another process's
    seen: list[Statement]

    def get(self, server: FhirServer, path: str, **query: str) -> dict[str, Any]:
        resp = server.handle(FhirRequest("GET", path, list(query.items()), access=SYSTEM))
        assert resp.status == 200 and resp.resource is not None, resp
        return resp.resource

    def put(self, server: FhirServer, resource: dict[str, Any]) -> None:
        assert self.put_status(server, resource)[0] in (200, 201)

    def put_status(self, server: FhirServer, resource: dict[str, Any]) -> tuple[int, str]:
        path = f"{resource['resourceType']}/{resource['id']}"
        return answer(server.handle(FhirRequest("PUT", path, headers=JSON, body=orjson.dumps(resource),
                                                access=SYSTEM)))

    def get_status(self, server: FhirServer, path: str) -> tuple[int, str]:
        return answer(server.handle(FhirRequest("GET", path, access=SYSTEM)))


def answer(resp: FhirResponse) -> tuple[int, str]:
    """(status, the OperationOutcome's diagnostics or "")."""
    issues = (resp.resource or {}).get("issue") or [{}]
    return resp.status, str(issues[0].get("diagnostics", ""))


def serving_engine(backend: Backend, code: str, view: TenantStore) -> Any:
    return tenant_engine(backend.engine, backend.settings, code, serving=True, view=view, status_age=1.0)


@pytest.fixture(scope="module")
def hospital(backend: Backend) -> Iterator[Hospital]:
    view, other = TenantStore(backend.engine, backend.settings), TenantStore(backend.engine, backend.settings)
    if view.get(CODE) is None:
        view.create(CODE, "Reads")
    engine = serving_engine(backend, CODE, view)
    seen: list[Statement] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(conn: Connection, _c: Any, statement: str, _p: Any, _ctx: Any, _m: bool) -> None:
        info = conn.connection.dbapi_connection.info  # type: ignore[union-attr]
        seen.append(Statement(statement, info.transaction_status != psycopg.pq.TransactionStatus.IDLE))

    h = Hospital(FhirServer(backend.settings, backend.engine),
                 FhirServer(tenant_settings(backend.settings, CODE), engine), view, other, seen)
    # The same ids in both: the default tenant's carry its name, so anything of it seen in the hospital leaked.
    for server, name in ((h.default, "Default"), (h.tenant, "Hospital")):
        h.put(server, {"resourceType": "Organization", "id": "org1", "name": f"{name} org"})
        h.put(server, {"resourceType": "Patient", "id": "p1", "name": [{"family": name}],
                       "managingOrganization": {"reference": "Organization/org1"}})
    h.put(h.default, {"resourceType": "Patient", "id": "only-default", "name": [{"family": "Default"}]})
    yield h


def test_reads_are_single_qualified_statements_and_see_only_the_hospital(hospital: Hospital) -> None:
    h = hospital
    h.get(h.tenant, "Patient/p1")  # the status view is fresh and the guard knows the bare names
    cases = [("Patient/p1", {}), ("Patient/p1/_history/1", {}), ("Patient", {"family": "Default"}),
             ("Patient", {"_id": "p1", "_include": "Patient:organization"}), ("Patient/p1/_history", {}),
             ("Patient", {"organization.name": "Default"}), ("Patient", {"_id": "only-default"}),
             ("Organization/org1", {})]
    for path, query in cases:
        h.seen.clear()
        found = h.get(h.tenant, path, **query)
        body = orjson.dumps(found.get("entry", []) if found["resourceType"] == "Bundle" else found).decode()
        assert "Default" not in body and "only-default" not in body, (path, query, body)
        assert h.seen, path
        for statement in h.seen:
            assert not statement.in_transaction, (path, statement.sql)  # no BEGIN, no search_path: one trip each
            assert f"tenant_{CODE.replace('-', '_')}." in statement.sql, statement.sql
    assert h.get(h.tenant, "Patient/p1")["name"][0]["family"] == "Hospital"
    assert h.get(h.tenant, "Patient", _id="only-default")["total"] == 0
    assert h.get(h.default, "Patient/p1")["name"][0]["family"] == "Default"


def test_bare_table_names_run_in_the_hospitals_schema_alone(hospital: Hospital, backend: Backend) -> None:
    h = hospital
    count = "SELECT count(*) FROM resource WHERE resource_type = 'Patient'"

    def counts(repo: Repository) -> tuple[int, int, int, bool]:
        first = repo.conn.execute(text(count)).scalar_one()
        second = repo.conn.exec_driver_sql(count).scalar_one()
        joined = repo.conn.execute(text("SELECT count(*) FROM resource r JOIN resource_history h USING (id)"
                                        " WHERE r.resource_type = 'Patient'")).scalar_one()
        info = repo.conn.connection.dbapi_connection.info  # type: ignore[union-attr]
        return first, second, joined, info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    h.seen.clear()
    assert h.tenant.uow.run(counts, write=False, access=SYSTEM) == (1, 1, 1, True)
    assert h.default.uow.run(counts, write=False, access=SYSTEM)[:2] == (2, 2)
    # The guard's BEGIN and schema came first, in one trip: the first bare statement already ran scoped.
    assert h.seen[0].in_transaction
    # The schema was the transaction's alone: no pooled connection kept it.
    conns = [backend.engine.connect() for _ in range(backend.settings.db_pool_size)]
    try:
        paths = {c.exec_driver_sql("SHOW search_path").scalar_one() for c in conns}
    finally:
        for c in conns:
            c.close()
    assert paths == {'"$user", public'}


def test_suspension_refuses_writes_at_once_and_reads_within_the_view(hospital: Hospital) -> None:
    h = hospital
    suspended = (403, f"Hospital {CODE} is suspended on this server")
    h.get(h.tenant, "Patient/p1")
    h.other.set_status(CODE, TenantStatus.SUSPENDED)  # another process
    try:
        # The write's own first statement reads the status: refused at once.
        assert h.put_status(h.tenant, {"resourceType": "Patient", "id": "p2"}) == suspended
        wait_until(lambda: h.get_status(h.tenant, "Patient/p1") == suspended, 5,
                   "a suspended hospital's reads refused once this process's view is a second old")
    finally:
        h.view.set_status(CODE, TenantStatus.ACTIVE)  # this process: its view knows at once
    assert h.get_status(h.tenant, "Patient/p1")[0] == 200
    h.view.set_status(CODE, TenantStatus.SUSPENDED)
    try:  # in the process that suspends it, reads are refused at once too
        assert h.get_status(h.tenant, "Patient/p1") == suspended
    finally:
        h.view.set_status(CODE, TenantStatus.ACTIVE)


def test_a_deleted_hospitals_read_is_refused_not_an_error(hospital: Hospital, backend: Backend) -> None:
    view = TenantStore(backend.engine, backend.settings)
    view.create("rd-gone", "Gone")
    server = FhirServer(tenant_settings(backend.settings, "rd-gone"), serving_engine(backend, "rd-gone", view))
    hospital.put(server, {"resourceType": "Patient", "id": "p1"})
    hospital.get(server, "Patient/p1")  # the view: active
    TenantStore(backend.engine, backend.settings).delete("rd-gone")  # another process
    assert hospital.get_status(server, "Patient/p1") == (403, "Hospital rd-gone is not served on this server")
