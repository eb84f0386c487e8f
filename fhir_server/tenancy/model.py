"""A tenant: one hospital on a shared server, with its own schema (PostgreSQL) or file (SQLite)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from fhir_server.errors import INVALID, FhirError

DEFAULT = "default"
PLATFORM_SCHEMA = "fhir_platform"  # shared tables (tenants, HL7 routes), never a tenant's clinical data
# Lower case, so a tenant never looks like a resource type (/fhir/Patient) and is a safe schema/file name.
CODE = re.compile(r"^[a-z][a-z0-9-]{1,39}$")
# First path segments after /fhir that mean something else already.
RESERVED = frozenset({DEFAULT, "metadata", "subscriptions", "auth", "admin", "docs", "health", "metrics",
                      "openapi", "platform", "public", "pg-catalog", "information-schema"})


class TenantStatus(StrEnum):
    PENDING = "PENDING"  # being created: schema or file not yet at the current migration
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"  # every request, token and HL7 message refused at once
    INACTIVE = "INACTIVE"  # deleted: its data dropped, the code kept so it is never reused by accident


@dataclass(frozen=True)
class Tenant:
    code: str
    name: str
    status: TenantStatus
    max_users: int | None
    max_patients: int | None
    created: datetime

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "name": self.name, "status": self.status.value, "maxUsers": self.max_users,
                "maxPatients": self.max_patients, "created": self.created.isoformat()}


def check_code(code: str) -> str:
    if not CODE.match(code) or code in RESERVED:
        raise FhirError(400, INVALID, f"Tenant code {code!r} must be 2-40 characters a-z, 0-9 and '-', start with "
                                      f"a letter, and not be one of: {', '.join(sorted(RESERVED))}")
    return code


def schema_name(code: str) -> str:
    """The PostgreSQL schema of a tenant (quoted where used; '-' is legal inside quotes)."""
    return f"tenant_{code.replace('-', '_')}"
