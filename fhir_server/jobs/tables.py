"""The bulk data job table (one row per $export / $import kick-off), on the shared MetaData."""

from __future__ import annotations

from sqlalchemy import Column, Index, String, Table, Text

from fhir_server.storage.models import Base, JsonDoc, UTCDateTime

BULK_JOB = Table(
    "bulk_job", Base.metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # export | import
    Column("status", String(16), nullable=False),  # queued | running | completed | failed | cancelled
    Column("request", Text, nullable=False),  # the kick-off request URL, echoed in the manifest
    Column("params", JsonDoc, nullable=False),  # what to export / import (bulk_params.py)
    Column("access", JsonDoc, nullable=True),  # the owner's access (auth/stored.py); null: none at all
    Column("owner", String(255), nullable=True),  # AccessContext.subject: only they poll and download
    Column("transaction_time", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # A runner holds the job while lease_until is ahead (renewed at every checkpoint); once it lapses,
    # another runner claims the job and resumes from the checkpoints in ``progress``.
    Column("lease_token", String(64), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("progress", JsonDoc, nullable=False),  # per-type cursors, output and error files so far
    Column("error", Text, nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
    Index("ix_bulk_job_status_lease", "status", "lease_until"),
)
