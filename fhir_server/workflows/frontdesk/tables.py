"""The front desk's index and lock tables (migration 0018_frontdesk). The truth stays in the Patient resources;
these rows are rewritten in each Patient write's own transaction, as the search index is.

- ``frontdesk_mrn_day``: the last MRN number handed out per calendar day. Incrementing the day's row locks it
  until the creating transaction ends, so numbers are consecutive and a rolled-back create frees its number.
- ``frontdesk_identifier``: (system, value) of the unique identifiers (MRN, ABHA) of live, unmerged patients;
  the primary key refuses a second holder, also between concurrent writers.
- ``frontdesk_match_key``: blocking keys (phonetic name codes, birth date, phone, identifiers) that find
  Patient/$match candidates in the database instead of reading every Patient.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, PrimaryKeyConstraint, String, Table, Text

from fhir_server.storage.models import Base

MRN_DAY = Table(
    "frontdesk_mrn_day", Base.metadata,
    Column("day", String(8), primary_key=True),  # YYYYMMDD
    Column("last", Integer, nullable=False),
)

IDENTIFIER = Table(
    "frontdesk_identifier", Base.metadata,
    Column("system", Text, nullable=False),
    Column("value", Text, nullable=False),
    Column("patient_id", String(64), nullable=False),
    PrimaryKeyConstraint("system", "value", name="pk_frontdesk_identifier"),
    Index("ix_frontdesk_identifier_patient", "patient_id"),
)

MATCH_KEY = Table(
    "frontdesk_match_key", Base.metadata,
    Column("key", String(200), nullable=False),
    Column("patient_id", String(64), nullable=False),
    PrimaryKeyConstraint("key", "patient_id", name="pk_frontdesk_match_key"),
    Index("ix_frontdesk_match_key_patient", "patient_id"),
)
