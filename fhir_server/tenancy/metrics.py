"""A tenant's figures for the platform administration: counts and sizes, never clinical content."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text

from fhir_server.auth.tables import AUTH_USER
from fhir_server.config import Settings
from fhir_server.storage.models import ResourceRow
from fhir_server.tenancy.engines import sqlite_file, tenant_engine
from fhir_server.tenancy.model import DEFAULT, schema_name
from fhir_server.tenancy.store import TenantStore


def tenant_metrics(store: TenantStore, settings: Settings, code: str) -> dict[str, Any]:
    tenant = store.require(code) if code != DEFAULT else None
    engine = tenant_engine(store.base, settings, code)
    live = ResourceRow.deleted.is_(False)
    since = datetime.now(UTC) - timedelta(days=1)
    try:
        with engine.connect() as conn:
            resources = conn.execute(select(func.count()).select_from(ResourceRow).where(live)).scalar_one()
            patients = conn.execute(select(func.count()).select_from(ResourceRow).where(
                live, ResourceRow.resource_type == "Patient")).scalar_one()
            users = conn.execute(select(func.count()).select_from(AUTH_USER)).scalar_one()
            # Every request leaves an AuditEvent (FHIR_AUDIT_ENABLED): their number in the last day.
            requests = conn.execute(select(func.count()).select_from(ResourceRow).where(
                ResourceRow.resource_type == "AuditEvent", ResourceRow.last_updated >= since)).scalar_one()
            if engine.dialect.name == "postgresql":
                schema = "public" if code == DEFAULT else schema_name(code)
                size = conn.execute(text(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s AND c.relkind = 'r'"),
                    {"s": schema}).scalar_one()
            else:
                path = settings.sqlite_path() if code == DEFAULT else sqlite_file(settings, code)
                size = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal"))
                           if p is not None and p.exists()) if path is not None else 0
    finally:
        if code != DEFAULT and engine.dialect.name == "sqlite":
            engine.dispose()
    out: dict[str, Any] = {"code": code, "patients": patients, "users": users, "resources": resources,
                           "storageBytes": int(size), "requestsLastDay": requests}
    if tenant is not None:
        out.update(tenant.to_json())
    return out
