"""Canonical resources by URL (fhir_server/packages/canonical.py), filled from the resources already stored.

Revision ID: 0011
Revises: 0005
Create Date: 2026-12-01
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0005"
branch_labels = None
depends_on = None

_TYPES = ("StructureDefinition", "ValueSet", "CodeSystem", "ConceptMap", "SearchParameter", "OperationDefinition",
          "CapabilityStatement", "ImplementationGuide", "NamingSystem", "Questionnaire", "CompartmentDefinition",
          "StructureMap")


def upgrade() -> None:
    table = op.create_table(
        "canonical_resource",
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("url", sa.String(255), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "url", "resource_id", name="pk_canonical_resource"),
    )
    op.create_index("ix_canonical_resource_id", "canonical_resource", ["resource_type", "resource_id"])
    conn = op.get_bind()
    res = sa.table("resource", sa.column("resource_type"), sa.column("id"), sa.column("version_id"),
                   sa.column("deleted"), sa.column("content"))
    rows = conn.execute(sa.select(res.c.resource_type, res.c.id, res.c.version_id, res.c.content).where(
        res.c.resource_type.in_(_TYPES), res.c.deleted.is_(False)))
    batch = []
    for rtype, rid, version_id, content in rows:
        data = json.loads(content) if isinstance(content, str | bytes) else content
        url = data.get("url") if isinstance(data, dict) else None
        if isinstance(url, str) and url and len(url) <= 255:
            version = data.get("version")
            batch.append({"resource_type": rtype, "url": url, "resource_id": rid, "version_id": version_id,
                          "version": str(version)[:64] if isinstance(version, str) else ""})
    if batch:
        op.bulk_insert(table, batch)


def downgrade() -> None:
    op.drop_table("canonical_resource")
