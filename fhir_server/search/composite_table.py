"""The composite search index (migration 0007): one row per component value of one element.

A composite parameter (``component-code-value-quantity``) must match its components on the *same* element
(one ``Observation.component``), not anywhere in the resource. So each element the composite's expression
yields gets a number (``elem``), and each of its component values a row carrying the component's position
(``part``), the component row's own parameter (``sub``: ``component-value-quantity`` or its ``:canonical``
UCUM form) and the columns of the component's type: token hashes, string, date range, number/quantity,
reference target, uri hash (in ``hash_value``). A search joins one alias per part on (resource, param, elem).
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import BigInteger, Float, Index, Integer, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from fhir_server.storage.models import Base, BigId


class SearchComposite(Base):
    __tablename__ = "search_composite"
    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(100))  # the composite parameter
    elem: Mapped[int] = mapped_column(Integer)  # which element of the composite's expression
    part: Mapped[int] = mapped_column(Integer)  # which component (0, 1, 2)
    sub: Mapped[str] = mapped_column(String(120))  # the component row's parameter
    hash_value: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # token code / string / uri
    hash_sys_value: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    hash_sys: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    value_norm: Mapped[str | None] = mapped_column(String(255), nullable=True)
    low: Mapped[datetime | None] = mapped_column(nullable=True)  # UTCDateTime, as in search_date
    high: Mapped[datetime | None] = mapped_column(nullable=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    system: Mapped[str | None] = mapped_column(Text, nullable=True)
    code: Mapped[str | None] = mapped_column(Text, nullable=True)
    unit: Mapped[str | None] = mapped_column(Text, nullable=True)
    target_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    target_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    target_url: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        Index("ix_search_composite_res", "resource_type", "resource_id"),
        Index("ix_search_composite_elem", "resource_id", "param", "elem"),
        Index("ix_search_composite_sys_value", "hash_sys_value"),
        Index("ix_search_composite_value", "hash_value"),
        Index("ix_search_composite_number", "resource_type", "param", "part", "value"),
    )


COMPOSITE = cast(Table, SearchComposite.__table__)
