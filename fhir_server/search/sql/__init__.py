"""SQL for search: one predicate builder per parameter type, composed here over the resource table."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Select, and_, false, or_, select

from fhir_server.errors import FhirError
from fhir_server.search.access import access_condition
from fhir_server.search.parser import (
    AnyCriterion,
    CompartmentCriterion,
    CompositeValue,
    Criterion,
    HasCriterion,
    TokenValue,
    Value,
    parse_query,
)
from fhir_server.search.sql.common import SqlContext
from fhir_server.search.sql.composite import composite_predicate
from fhir_server.search.sql.date import date_predicate
from fhir_server.search.sql.number import number_predicate, quantity_predicate
from fhir_server.search.sql.reference import chain_ids, has_predicate, reference_predicate
from fhir_server.search.sql.special import fulltext_predicate, list_predicate
from fhir_server.search.sql.string import string_predicate
from fhir_server.search.sql.token import token_predicate
from fhir_server.search.sql.uri import uri_predicate
from fhir_server.search.tables import REFERENCE
from fhir_server.storage.models import RESOURCE

__all__ = ["SqlContext", "conditions", "driver", "match_ids", "predicate"]


def predicate(ctx: SqlContext, r: FromClause, rtype: str, c: AnyCriterion) -> ColumnElement[bool]:
    def sub(target: str, criteria: list[Criterion | HasCriterion]) -> Select[tuple[str]]:
        return match_ids(ctx, target, [*criteria])

    if isinstance(c, HasCriterion):
        return has_predicate(r, rtype, c, sub)
    if isinstance(c, CompartmentCriterion):
        return compartment_predicate(r, rtype, c)
    if c.param.code in ("_text", "_content"):
        return fulltext_predicate(ctx, r, rtype, c)
    if c.param.code == "_list":  # only Lists the caller may read: members must not leak through a hidden one
        return list_predicate(r, rtype, c, match_ids(ctx, "List", []))
    if c.param.union_of:  # no rows of its own: the same criterion on each parameter of the union
        each = [predicate(ctx, r, rtype, on_part(ctx, rtype, c, code)) for code in c.param.union_of]
        negated = c.modifier == "not" or (c.modifier == "missing" and bool(c.values[0]))
        return and_(*each) if negated else or_(*each)
    if c.param.conjunction_of:  # a composite on the resource itself: its components' criteria, ANDed
        alternatives = [and_(*(predicate(ctx, r, rtype, part) for part in v.parts))
                        for v in c.values if isinstance(v, CompositeValue)]
        return or_(*alternatives) if alternatives else false()
    kind = c.param.type
    if c.param.code == "_id":
        if c.modifier == "missing":
            return r.c.id.is_(None) if c.values[0] else r.c.id.is_not(None)
        ids = [v.code for v in c.values if isinstance(v, TokenValue) and v.code]
        return r.c.id.not_in(ids) if c.modifier == "not" else r.c.id.in_(ids)
    if kind == "token":
        return token_predicate(r, rtype, c)
    if kind == "string":
        return string_predicate(r, rtype, c)
    if kind == "date":
        return date_predicate(r, rtype, c)
    if kind == "number":
        return number_predicate(r, rtype, c)
    if kind == "quantity":
        return quantity_predicate(r, rtype, c)
    if kind == "uri":
        return uri_predicate(r, rtype, c)
    if kind == "reference":
        return reference_predicate(ctx, r, rtype, c, sub)
    if kind == "composite":  # every component on the same element (sql/composite.py)
        return composite_predicate(r, rtype, c)
    raise AssertionError(f"unsupported parameter type {kind}")  # the parser only lets supported ones through


def on_part(ctx: SqlContext, rtype: str, c: Criterion, code: str) -> Criterion:
    """``c`` as a criterion on ``code``, one parameter of ``c.param``'s union (a composite's values are
    re-aimed at that composite's own components: ``combo-code`` parts become ``code`` parts)."""
    part = ctx.registry.get(rtype, code)
    assert part is not None
    if part.type != "composite":
        return replace(c, param=part)
    components = [ctx.registry.component(rtype, definition) for definition, _ in part.components]
    values: list[Value] = [CompositeValue(tuple(replace(p, param=comp) if comp is not None else p
                                                for p, comp in zip(v.parts, components, strict=True)))
                           if isinstance(v, CompositeValue) else v for v in c.values]
    return replace(c, param=part, values=values)


def driver(ctx: SqlContext, rtype: str,
           criteria: list[AnyCriterion]) -> tuple[Select[Any], list[AnyCriterion]] | None:
    """For a page in id order: the candidate ids of one criterion to walk in id order, and the others.

    A chain (``subject:Patient.name=x``) can match thousands of resources; as a predicate on the resource
    table PostgreSQL joins and sorts all of them before the LIMIT (it expects a handful). Its reference
    rows sorted by resource id, each probed against the resource table and the other criteria, stop after
    one page. The candidate set holds every match (the criterion is one of the ANDed ones), so the result
    is the same."""
    for i, c in enumerate(criteria):
        if isinstance(c, Criterion) and c.chain and c.modifier is None:
            return (chain_ids(rtype, c, lambda target, inner: match_ids(ctx, target, [*inner])),
                    [*criteria[:i], *criteria[i + 1:]])
    return None


def compartment_predicate(r: FromClause, rtype: str, c: CompartmentCriterion) -> ColumnElement[bool]:
    members = select(REFERENCE.c.resource_id).where(
        REFERENCE.c.resource_type == rtype, REFERENCE.c.param.in_(c.params), REFERENCE.c.target_type == c.compartment,
        REFERENCE.c.target_id == c.compartment_id, REFERENCE.c.target_url.is_(None))
    cond: ColumnElement[bool] = r.c.id.in_(members)
    if c.itself and rtype == c.compartment:
        cond = or_(cond, r.c.id == c.compartment_id)
    return cond


def conditions(ctx: SqlContext, r: FromClause, rtype: str,
               criteria: list[AnyCriterion]) -> list[ColumnElement[bool]]:
    conds = [r.c.resource_type == rtype, r.c.deleted.is_(False), *(predicate(ctx, r, rtype, c) for c in criteria)]
    restriction = access_condition(ctx.access, r, rtype)  # also inside chains and _has: they nest conditions()
    if restriction is not None:
        conds.append(restriction)
    granular = _granular_condition(ctx, r, rtype)
    if granular is not None:
        conds.append(granular)
    return conds


def _granular_condition(ctx: SqlContext, r: FromClause, rtype: str) -> ColumnElement[bool] | None:
    """The token's v2 granular scopes (``patient/Observation.rs?category=laboratory``) as search criteria:
    any one scope's constraints, all of them. A constraint that is no search parameter of the type, or not a
    valid value, matches nothing (fail closed, like the per-resource check)."""
    sets = ctx.access.search_constraints(rtype)
    if sets is None:
        return None
    alternatives: list[ColumnElement[bool]] = []
    for constraints in sets:
        try:
            query = parse_query(ctx.registry, rtype, list(constraints), base_url=ctx.base_url)
        except FhirError:
            continue
        if query.unknown or query.control or not query.criteria:
            continue
        alternatives.append(and_(*(predicate(ctx, r, rtype, c) for c in query.criteria)))
    return or_(*alternatives) if alternatives else false()


def match_ids(ctx: SqlContext, rtype: str, criteria: list[AnyCriterion]) -> Select[Any]:
    """``SELECT id`` of the live resources of ``rtype`` matching all criteria (a subquery for nesting)."""
    r = RESOURCE.alias()
    return select(r.c.id).where(and_(*conditions(ctx, r, rtype, criteria)))
