"""The token's patient-compartment restriction as SQL, added to every search query (issue 4 point 7).

``AccessPolicy.search_compartment(type)`` says whether reading ``type`` needs one patient's compartment
(and through which reference parameters). Applied in ``conditions()``, it narrows the main search, ``_total``,
chains, ``_has``, compartment and system search alike, so pages are full and counts and existence checks see
only what the token may read. The Repository's per-resource check (``read_many``) stays as defence in depth
and still decides what SQL cannot (v2 ``?category=`` constraints).

``check_criteria`` refuses (403) a search whose criteria reach a type the token may not search at all (a
chain's target, ``_has``'s source, ``_list``), and ``check_include`` the same for ``_include``/``_revinclude``:
an answer built on resources the caller may not see would be an oracle even when empty (issue 12 point 7).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, FromClause, false, or_, select

from fhir_server.errors import FORBIDDEN, FhirError
from fhir_server.search.parser import AnyCriterion, Criterion, HasCriterion
from fhir_server.search.registry import SearchParam, split_union
from fhir_server.search.tables import REFERENCE

if TYPE_CHECKING:
    from fhir_server.storage.repository import AccessPolicy


def readable(access: AccessPolicy, resource_type: str) -> bool:
    """Whether the token may search (SMART ``s``) any resource of this type at all."""
    scope = access.search_compartment(resource_type)
    return scope is None or (bool(scope[0]) and (bool(scope[1]) or resource_type == "Patient"))


def refuse_masked(access: AccessPolicy, resource_type: str, param: SearchParam) -> None:
    """403 for a search parameter over elements the caller's role does not see (masks.py): matches would
    tell what the masked view hides (``Encounter?reason-code=...``, ``_text``, ``_content``), in the main
    search as in chains and ``_has`` alike."""
    masks = access.masks(resource_type)
    if not masks:
        return
    hit = param.code in ("_text", "_content")
    for part in split_union(param.expression or "") if not hit else ():
        path = part.removeprefix(f"{resource_type}.").removeprefix("(").removesuffix(")")
        for spec in masks:
            url = spec[len("extension("):-1] if spec.startswith("extension(") else None
            hit = hit or (url in part if url is not None else path == spec or path.startswith(spec + ".")
                          or path.startswith(spec + "[") or path.startswith(spec + ".where"))
    if hit:
        raise FhirError(403, FORBIDDEN, f"Searching {resource_type} by '{param.code}' is not permitted with "
                                        "this user's role (it covers elements the role does not see)",
                        (param.code,))


def refuse_masked_criteria(access: AccessPolicy, resource_type: str, criteria: Iterable[object]) -> None:
    """``refuse_masked`` for parsed criteria checked before any SQL runs (Subscription criteria): chains and
    ``_has`` included."""
    for c in criteria:
        if isinstance(c, Criterion):
            refuse_masked(access, resource_type, c.param)
            for target, inner in zip(c.chain_types, c.chain, strict=False):
                refuse_masked_criteria(access, target, [inner])
        elif isinstance(c, HasCriterion):
            refuse_masked_criteria(access, c.source_type, [c.inner])


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


def forbidden(resource_type: str, name: str) -> FhirError:
    return FhirError(403, FORBIDDEN, f"The access token does not permit searching {resource_type} (in '{name}')",
                     (name,))


def check_targets(access: AccessPolicy, name: str, targets: list[str] | tuple[str, ...]) -> None:
    """A reference that may lead to several types needs one the token may search (the others contribute
    nothing: the SQL filter); a single named type must be searchable itself."""
    if targets and not any(readable(access, t) for t in targets):
        raise forbidden(targets[0] if len(targets) == 1 else "any of " + ", ".join(targets), name)


def check_criteria(access: AccessPolicy, criteria: list[AnyCriterion]) -> None:
    """403 when a criterion reaches a type the token may not search: chains, ``_has``, ``_list``."""
    for c in criteria:
        if isinstance(c, HasCriterion):
            name = f"_has:{c.source_type}:{c.ref_param}"
            if not readable(access, c.source_type):
                raise forbidden(c.source_type, name)
            check_criteria(access, [c.inner])
        elif isinstance(c, Criterion):
            if c.chain:
                check_targets(access, c.name, c.chain_types)
                check_criteria(access, list(c.chain))
            if c.param.code == "_list" and not readable(access, "List"):
                raise forbidden("List", c.name)


def check_include(access: AccessPolicy, name: str, reverse: bool, source: str,
                  targets: list[str] | tuple[str, ...]) -> None:
    """``_revinclude=Source:param`` includes Sources; ``_include=Source:param[:Target]`` includes targets."""
    if reverse:
        if source != "*" and not readable(access, source):
            raise forbidden(source, name)
    else:
        check_targets(access, name, targets)
