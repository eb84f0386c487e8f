"""The database full-text table (migration 0006), on the storage metadata.

One row per live resource: its folded narrative (``_text``) and whole-resource text (``_content``). The
words are indexed by the database itself, beside this table: on PostgreSQL two generated ``tsvector``
columns (``to_tsvector('simple', ...)``, language-neutral) with GIN indexes; on SQLite an FTS5
external-content table ``search_text_fts`` kept in step by triggers. Neither is declared here, so rows are
written by the same bulk path (COPY / executemany) as the other index rows.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Index, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from fhir_server.storage.models import Base, BigId


class SearchText(Base):
    __tablename__ = "search_text"
    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)  # the FTS5 rowid
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    narrative: Mapped[str] = mapped_column(Text)
    content: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_search_text_res", "resource_type", "resource_id"),)


SEARCH_TEXT = cast(Table, SearchText.__table__)
