"""``DELETE [type]/[id]?_cascade=delete`` (HAPI's cascading delete): the resource and, round by round, every
resource that refers to it (by the search index's reference rows, AuditEvents aside), in the one unit of
work of the request, so all go or none. Administrators only: the admin role, a backend with a
``system/*`` write-class scope, or the server itself; anyone else 403. Each resource deleted still passes
the caller's own write check, and the delete's AuditEvent names every one of them.
"""

from __future__ import annotations

from fhir_server.auth.access import AccessContext
from fhir_server.errors import CONFLICT, FORBIDDEN, INVALID, TOO_COSTLY, FhirError
from fhir_server.rest.integrity import referrers
from fhir_server.storage.access import SystemAccess
from fhir_server.storage.repository import AccessPolicy, Repository, Version

PARAM = "_cascade"
MAX_ROUNDS = 10  # referrers of referrers ..., this many levels deep
MAX_RESOURCES = 1000  # resources one cascading delete may remove


def requested(value: str | None) -> bool:
    """Whether ``_cascade`` asks for a cascade; any value but ``delete`` is refused."""
    if value is None:
        return False
    if value != "delete":
        raise FhirError(400, INVALID, f"_cascade={value!r} is not supported; the only value is 'delete'", (PARAM,))
    return True


def may_cascade(access: AccessPolicy) -> bool:
    """The server itself (local mode acts as it), an ``admin`` user, or a backend granted writes on every type."""
    if isinstance(access, SystemAccess):
        return True
    if isinstance(access, AccessContext):
        if access.role is not None:
            return access.role == "admin"
        return any(s.context == "system" and s.resource_type == "*" and set("cud") <= set(s.permissions)
                   and not s.constraints for s in access.scopes)
    return False


def delete(repo: Repository, resource_type: str, resource_id: str, *, if_match: int | None = None) -> Version | None:
    if not may_cascade(repo.access):
        raise FhirError(403, FORBIDDEN, "_cascade=delete is for administrators (the admin role or a system/* "
                                        "write scope)", (PARAM,))
    version = repo.delete(resource_type, resource_id, if_match=if_match)
    done = {(resource_type, resource_id)}
    frontier = set(done)
    for _round in range(MAX_ROUNDS):
        found = referrers(repo, frontier, limit=MAX_RESOURCES + 1)
        frontier = {(t, i) for t, i, _ in found} - done
        if not frontier:
            return version
        if len(done) + len(frontier) > MAX_RESOURCES:
            raise FhirError(409, TOO_COSTLY, f"_cascade=delete of {resource_type}/{resource_id} would delete more "
                                             f"than {MAX_RESOURCES} resources; nothing was deleted", (PARAM,))
        for rtype, rid in sorted(frontier):
            repo.delete(rtype, rid)
        done |= frontier
    raise FhirError(409, CONFLICT, f"_cascade=delete of {resource_type}/{resource_id} goes deeper than {MAX_ROUNDS} "
                                   "levels of referrers; nothing was deleted", (PARAM,))
