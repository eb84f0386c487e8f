"""Predicates of the special parameters: full text (``_text``, ``_content``) and ``_list``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, FromClause, Select, select

from fhir_server.errors import NOT_SUPPORTED, FhirError
from fhir_server.search.fulltext import FIELDS
from fhir_server.search.fulltext.syntax import TextQuery
from fhir_server.search.parser import Criterion
from fhir_server.search.sql.common import SqlContext
from fhir_server.search.tables import REFERENCE


def fulltext_predicate(ctx: SqlContext, r: FromClause, rtype: str, c: Criterion) -> ColumnElement[bool]:
    if ctx.fulltext is None:
        raise FhirError(400, NOT_SUPPORTED, f"'{c.name}': no full-text index is configured", (c.name,))
    queries = [v for v in c.values if isinstance(v, TextQuery)]
    return ctx.fulltext.predicate(r, rtype, FIELDS[c.param.code], queries)


def list_predicate(r: FromClause, rtype: str, c: Criterion, readable: Select[Any]) -> ColumnElement[bool]:
    """Entries of the List(s): its ``item`` references (List.entry.item), from the reference index.

    ``readable``: ids of the live Lists the caller may read (the access filter): a List outside a
    patient token's compartment contributes no members, so its contents cannot be probed."""
    ref = REFERENCE
    members = select(ref.c.target_id).where(
        ref.c.resource_type == "List", ref.c.resource_id.in_([str(v) for v in c.values]), ref.c.param == "item",
        ref.c.target_type == rtype, ref.c.target_url.is_(None), ref.c.resource_id.in_(readable))
    return r.c.id.in_(members)
