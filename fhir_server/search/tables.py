"""Search index tables, one per parameter type (HAPI's layout), on the storage models' metadata.

Each row belongs to (resource_type, resource_id, param). Equality lookups go through a 64-bit hash of
(resource type, parameter, value parts) so one narrow index answers them on SQLite and PostgreSQL alike;
range lookups (dates, numbers, string prefixes) use ordinary btree indexes. Rows are rewritten in the
resource's own transaction (``index.py``).
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import BigInteger, Float, Index, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from fhir_server.search.composite_table import COMPOSITE
from fhir_server.storage.models import Base, BigId

# A reasonable bound for indexed text (HAPI: 200); longer values still match :exact through their hash.
MAX_INDEXED = 255


class _Row:
    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(100))


class SearchString(_Row, Base):
    __tablename__ = "search_string"
    value_norm: Mapped[str] = mapped_column(String(MAX_INDEXED))  # accents removed, case folded
    value_exact: Mapped[str] = mapped_column(Text)
    hash_exact: Mapped[int] = mapped_column(BigInteger)  # (type, param, value_exact)

    __table_args__ = (
        Index("ix_search_string_res", "resource_type", "resource_id"),
        Index("ix_search_string_norm", "resource_type", "param", "value_norm",
              postgresql_ops={"value_norm": "varchar_pattern_ops"}),
        Index("ix_search_string_exact", "hash_exact", "resource_id"),
    )


class SearchToken(_Row, Base):
    __tablename__ = "search_token"
    system: Mapped[str | None] = mapped_column(Text, nullable=True)
    code: Mapped[str | None] = mapped_column(Text, nullable=True)
    text_norm: Mapped[str | None] = mapped_column(String(MAX_INDEXED), nullable=True)  # display / text
    hash_value: Mapped[int] = mapped_column(BigInteger)  # (type, param, code)
    hash_sys_value: Mapped[int] = mapped_column(BigInteger)  # (type, param, system, code)
    hash_sys: Mapped[int] = mapped_column(BigInteger)  # (type, param, system)

    __table_args__ = (
        Index("ix_search_token_res", "resource_type", "resource_id"),
        Index("ix_search_token_value", "hash_value", "resource_id"),
        Index("ix_search_token_sys_value", "hash_sys_value", "resource_id"),
        Index("ix_search_token_sys", "hash_sys", "resource_id"),
    )


class SearchReference(_Row, Base):
    __tablename__ = "search_reference"
    target_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    target_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    target_url: Mapped[str | None] = mapped_column(Text, nullable=True)  # absolute or canonical, not ours

    __table_args__ = (
        Index("ix_search_reference_res", "resource_type", "resource_id"),
        Index("ix_search_reference_target", "target_id", "target_type", "resource_type", "param", "resource_id"),
    )


class SearchDate(_Row, Base):
    __tablename__ = "search_date"
    low: Mapped[datetime]  # inclusive bounds, UTC; open ends are the extremes of the type
    high: Mapped[datetime]

    __table_args__ = (
        Index("ix_search_date_res", "resource_type", "resource_id"),
        Index("ix_search_date_low", "resource_type", "param", "low", "high"),
        Index("ix_search_date_high", "resource_type", "param", "high"),
    )


class SearchNumber(_Row, Base):
    __tablename__ = "search_number"
    value: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        Index("ix_search_number_res", "resource_type", "resource_id"),
        Index("ix_search_number_value", "resource_type", "param", "value"),
    )


class SearchQuantity(_Row, Base):
    __tablename__ = "search_quantity"
    value: Mapped[float] = mapped_column(Float)
    system: Mapped[str | None] = mapped_column(Text, nullable=True)
    code: Mapped[str | None] = mapped_column(Text, nullable=True)
    unit: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        Index("ix_search_quantity_res", "resource_type", "resource_id"),
        Index("ix_search_quantity_value", "resource_type", "param", "value"),
    )


class SearchUri(_Row, Base):
    __tablename__ = "search_uri"
    value: Mapped[str] = mapped_column(Text)
    hash_uri: Mapped[int] = mapped_column(BigInteger)  # (type, param, value)

    __table_args__ = (
        Index("ix_search_uri_res", "resource_type", "resource_id"),
        Index("ix_search_uri_hash", "hash_uri", "resource_id"),
    )


STRING = cast(Table, SearchString.__table__)
TOKEN = cast(Table, SearchToken.__table__)
REFERENCE = cast(Table, SearchReference.__table__)
DATE = cast(Table, SearchDate.__table__)
NUMBER = cast(Table, SearchNumber.__table__)
QUANTITY = cast(Table, SearchQuantity.__table__)
URI = cast(Table, SearchUri.__table__)

# Parameter type -> its index table.
TABLES: dict[str, Table] = {"string": STRING, "token": TOKEN, "reference": REFERENCE, "date": DATE,
                            "number": NUMBER, "quantity": QUANTITY, "uri": URI, "composite": COMPOSITE}
