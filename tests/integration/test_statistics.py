"""Fresh data plans well (issue 19 goal 4): `load`, `$import`'s end and any long run of writes leave the
searched tables analysed on PostgreSQL, in the tenant's own schema; autovacuum analyses them sooner."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_server.loader import load_paths
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from fhir_server.storage.statistics import SEARCHED_TABLES
from tests.conftest import TENANT_BACKENDS, Backend, wait_until

pytestmark = pytest.mark.parametrize("backend", [b for b in TENANT_BACKENDS if b != "sqlite"], indirect=True)
SYSTEM = as_system("test: loading data")


def _last_analyze(backend: Backend) -> dict[str, Any]:
    """Each searched table's last manual ANALYZE, in the schema this backend's transactions see."""
    with backend.engine.begin() as conn:
        rows = conn.exec_driver_sql(
            "SELECT relname, last_analyze FROM pg_stat_user_tables WHERE schemaname = current_schema()").all()
    return {name: when for name, when in rows if name in SEARCHED_TABLES}


def _bundle(n: int) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "request": {"method": "POST", "url": "Patient"},
         "resource": {"resourceType": "Patient", "name": [{"family": f"Stat{i}"}], "gender": "female"}}
        for i in range(n)]}


def test_load_analyses_the_searched_tables(backend: Backend, tmp_path: Path) -> None:
    before = _last_analyze(backend)
    path = tmp_path / "patients.json"
    path.write_text(json.dumps(_bundle(20)))
    server = FhirServer(backend.settings.model_copy(update={"analyze_after_rows": 0}), backend.engine)
    out = io.StringIO()
    assert load_paths(backend.settings, [str(path)], out, server, access=SYSTEM) == 0, out.getvalue()
    after = _last_analyze(backend)
    assert set(after) == set(SEARCHED_TABLES)
    assert all(after[t] is not None and (before.get(t) is None or after[t] > before[t]) for t in SEARCHED_TABLES)


def test_a_run_of_writes_is_analysed_in_the_background(backend: Backend) -> None:
    before = _last_analyze(backend)
    server = FhirServer(backend.settings.model_copy(update={"analyze_after_rows": 30}), backend.engine)

    def post(n: int) -> None:
        resp = server.handle(FhirRequest("POST", "", headers={"content-type": "application/fhir+json"},
                                         resource=_bundle(n), access=SYSTEM))
        assert resp.status == 200, resp.resource

    post(20)  # under the threshold: nothing analysed
    assert _last_analyze(backend).get("search_token") == before.get("search_token")
    post(20)  # 40 writes: past it

    def analysed() -> bool:
        when = _last_analyze(backend).get("search_token")
        return when is not None and (before.get("search_token") is None or when > before["search_token"])

    wait_until(analysed, 30, "the background ANALYZE")


def test_autovacuum_analyses_the_searched_tables_sooner(backend: Backend) -> None:
    with backend.engine.begin() as conn:
        options = dict(conn.exec_driver_sql(
            "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r'").all())
    for table in SEARCHED_TABLES:
        assert "autovacuum_analyze_scale_factor=0.02" in (options[table] or []), (table, options[table])
