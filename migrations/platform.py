"""For migrations of the platform's shared tables (tenancy, docs/tenancy.md): they run once, on the default
tenant's migration, into the ``fhir_platform`` schema (SQLite: the default file), never into a tenant's."""

from __future__ import annotations

from alembic import op

PLATFORM = "fhir_platform"


def platform_schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else PLATFORM


def platform_run() -> bool:
    return op.get_context().config.attributes.get("tenant") is None  # set when migrating a tenant
