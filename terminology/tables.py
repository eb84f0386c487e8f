"""Concept storage for fast terminology operations (migration 0005), on the storage metadata.

Kept in step with stored CodeSystem resources by a BEFORE_COMMIT hook (``terminology/sync.py``):
one row per CodeSystem resource, one per concept, and the transitive closure of is-a (every
(ancestor, descendant) pair, reflexive pairs included) so subsumption and is-a filters are one lookup.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, Index, Integer, String, Table, Text
from sqlalchemy.dialects.postgresql import JSONB

from fhir_server.storage.models import Base

Json = JSON().with_variant(JSONB(), "postgresql")

CODE_SYSTEM = Table(
    "terminology_code_system", Base.metadata,
    Column("resource_id", String(64), primary_key=True),
    Column("url", String(255), nullable=False),
    Column("version", String(64), nullable=False, default=""),  # "" when the CodeSystem has none
    Column("name", String(255)),
    Column("concept_count", Integer, nullable=False, default=0),
    Index("ix_terminology_code_system_url", "url", "version"),
)

CONCEPT = Table(
    "terminology_concept", Base.metadata,
    Column("resource_id", String(64), primary_key=True),
    Column("code", String(255), primary_key=True),
    Column("display", Text),
    Column("definition", Text),
    Column("designations", Json),  # [{language, use, value}] as in CodeSystem.concept.designation
    Column("properties", Json),  # [{code, value[x]}] as in CodeSystem.concept.property
    Column("parents", Json),  # direct parents' codes
    Column("seq", Integer, nullable=False, default=0),  # position in the CodeSystem, for stable expansions
    Index("ix_terminology_concept_seq", "resource_id", "seq"),
)

CLOSURE = Table(
    "terminology_closure", Base.metadata,
    Column("resource_id", String(64), primary_key=True),
    Column("ancestor", String(255), primary_key=True),
    Column("descendant", String(255), primary_key=True),
    Index("ix_terminology_closure_descendant", "resource_id", "descendant"),
)
