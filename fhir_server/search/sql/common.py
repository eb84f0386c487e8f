"""Shared pieces of the predicate builders: the context, index subqueries, :missing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, FromClause, Select, Table, select

from fhir_server.search.registry import Registry

if TYPE_CHECKING:
    from fhir_server.search.fulltext import FullTextIndex
    from fhir_server.storage.repository import AccessPolicy


@dataclass(frozen=True)
class SqlContext:
    registry: Registry
    base_url: str = ""  # references to this base are local (Type/id)
    # the caller's access (required): every query is narrowed to what it may read
    access: AccessPolicy = field(kw_only=True)
    fulltext: FullTextIndex | None = None  # _text / _content (search/fulltext); None: not configured


def index_ids(table: Table, rtype: str, param: str, *conds: ColumnElement[bool]) -> Select[Any]:
    """``SELECT resource_id`` of one parameter's index rows matching ``conds``."""
    return select(table.c.resource_id).where(table.c.resource_type == rtype, table.c.param == param, *conds)


def hash_ids(table: Table, *conds: ColumnElement[bool]) -> Select[Any]:
    """``SELECT resource_id`` by hash columns only: the hash already holds type and parameter."""
    return select(table.c.resource_id).where(*conds)


def matches(r: FromClause, ids: Select[Any], negate: bool = False) -> ColumnElement[bool]:
    return r.c.id.not_in(ids) if negate else r.c.id.in_(ids)


def missing(r: FromClause, table: Table, rtype: str, param: str, is_missing: bool) -> ColumnElement[bool]:
    return matches(r, index_ids(table, rtype, param), negate=is_missing)


def like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
