"""The token's patient-compartment restriction as SQL, added to every search query (issue 4 point 7).

``AccessPolicy.search_compartment(type)`` says whether reading ``type`` needs one patient's compartment
(and through which reference parameters). Applied in ``conditions()``, it narrows the main search, ``_total``,
chains, ``_has``, compartment and system search alike, so pages are full and counts and existence checks see
only what the token may read. The Repository's per-resource check (``read_many``) stays as defence in depth
and still decides what SQL cannot (v2 ``?category=`` constraints).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, FromClause, false, or_, select

from fhir_server.search.tables import REFERENCE

if TYPE_CHECKING:
    from fhir_server.storage.repository import AccessPolicy


def readable(access: AccessPolicy, resource_type: str) -> bool:
    """Whether the token may read any resource of this type at all."""
    scope = access.search_compartment(resource_type)
    return scope is None or (bool(scope[0]) and (bool(scope[1]) or resource_type == "Patient"))


def access_condition(access: AccessPolicy, r: FromClause, resource_type: str) -> ColumnElement[bool] | None:
    """The SQL filter on ``r`` (the resource table) for ``resource_type``; None when nothing is restricted."""
    scope = access.search_compartment(resource_type)
    if scope is None:
        return None
    patient, params = scope
    if not patient:
        return false()
    conds: list[ColumnElement[bool]] = []
    if params:
        members = select(REFERENCE.c.resource_id).where(
            REFERENCE.c.resource_type == resource_type, REFERENCE.c.param.in_(params),
            REFERENCE.c.target_type == "Patient", REFERENCE.c.target_id == patient,
            REFERENCE.c.target_url.is_(None))
        conds.append(r.c.id.in_(members))
    if resource_type == "Patient":
        conds.append(r.c.id == patient)
    return or_(*conds) if conds else false()
