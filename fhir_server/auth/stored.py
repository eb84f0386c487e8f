"""Access that outlives its request: kept with a bulk job, a Subscription (its author) or a websocket
binding token, and restored to run the job, filter a notification or check who polls.

Stored as JSON: a token's ``AccessContext`` field by field, or ``{"system": reason}`` for the server acting
for itself. Anything else (a row written before access was recorded, a lost row) restores as ``NO_ACCESS``:
fail closed, never full access.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fhir_server.auth.access import AccessContext
from fhir_server.auth.scopes import ResourceScope, resource_scopes
from fhir_server.storage.access import SystemAccess, as_system
from fhir_server.storage.repository import AccessPolicy

NO_ACCESS = AccessContext(())  # no scope: reads and writes nothing

StoredAccess = AccessContext | SystemAccess


def dump_access(access: AccessPolicy) -> dict[str, Any]:
    if isinstance(access, SystemAccess):
        return {"system": access.reason}
    if isinstance(access, AccessContext):
        return asdict(access)
    raise TypeError(f"cannot record an access policy of type {type(access).__name__}")


def load_access(data: Any) -> StoredAccess:
    if not isinstance(data, dict):
        return NO_ACCESS
    if isinstance(data.get("system"), str):
        return as_system(data["system"])  # written only by dump_access of a server-side SystemAccess
    if isinstance(data.get("scope"), str):  # a Subscription author recorded before the full form (scope text)
        return AccessContext(tuple(resource_scopes(data["scope"])), data.get("role"), data.get("patient"),
                             data.get("fhirUser"))
    scopes = tuple(ResourceScope(s["context"], s["resource_type"], s["permissions"],
                                 tuple((str(k), str(v)) for k, v in s.get("constraints", ())))
                   for s in data.get("scopes", ()))
    return AccessContext(scopes, data.get("role"), data.get("patient"), data.get("fhir_user"), data.get("subject"))


def same_holder(owner: AccessPolicy, caller: AccessPolicy) -> bool:
    """Whether ``caller`` is whoever left ``owner`` behind (a bulk job's poller and downloader): the same
    token holder (``subject``), or the server itself for what the server started."""
    if isinstance(owner, SystemAccess) or isinstance(caller, SystemAccess):
        return isinstance(owner, SystemAccess) and isinstance(caller, SystemAccess)
    if not isinstance(owner, AccessContext) or not isinstance(caller, AccessContext):
        return False
    if owner.subject is not None:
        return owner.subject == caller.subject
    return owner == caller and bool(owner.scopes)  # a token without a subject: only the very same grant
