"""The patient picker of a standalone launch (``launch/patient``): after signing in, a user who chooses a
patient searches for one among the Patients their role may read (name, MRN or other identifier, birth
date) and picks it. A ``patient`` user never sees it: they are their own patient.

Between sign-in and pick, the sign-in is carried by a pick ticket, a JWT signed with the server's key ring
(so any process can check it) bound to the user, the client and the authorization request, good for five
minutes; its audience is not the FHIR base, so it can never pass as an access token.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from joserfc.errors import JoseError

from fhir_server.auth.access import AccessContext
from fhir_server.auth.keys import KeyRing
from fhir_server.auth.scopes import resource_scopes
from fhir_server.auth.store import User
from fhir_server.errors import FhirError
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer

AUDIENCE = "urn:fhir-server:patient-pick"
LIFETIME = 300
PAGE = 20


def request_digest(client_id: str, pairs: list[tuple[str, str]]) -> str:
    return hashlib.sha256(repr((client_id, sorted(pairs))).encode()).hexdigest()


def issue_ticket(keys: KeyRing, user: User, client_id: str, pairs: list[tuple[str, str]]) -> str:
    now = int(time.time())
    return keys.sign({"aud": AUDIENCE, "sub": user.id, "client_id": client_id,
                      "req": request_digest(client_id, pairs), "iat": now, "exp": now + LIFETIME})


def ticket_user(keys: KeyRing, ticket: str, client_id: str, pairs: list[tuple[str, str]]) -> str | None:
    """The user id a valid ticket names for this client and request; None for anything else."""
    try:
        claims = keys.verify(ticket)
    except (JoseError, ValueError):
        return None
    if (claims.get("aud") != AUDIENCE or claims.get("client_id") != client_id
            or claims.get("req") != request_digest(client_id, pairs) or int(claims.get("exp", 0)) < time.time()):
        return None
    return str(claims["sub"])


def user_access(user: User) -> AccessContext:
    """What the picker may show: the Patients the user's role may read (user-level, not one compartment)."""
    return AccessContext(tuple(resource_scopes("user/Patient.rs")), user.role, None, user.fhir_user,
                         f"patient-picker {user.id}")


def search(fhir: FhirServer, user: User, name: str, identifier: str, birthdate: str,
           base_url: str) -> list[dict[str, Any]]:
    """Patients the user may read, matching what was typed (all, the first page, when nothing was)."""
    query = [(k, v) for k, v in (("name", name), ("identifier", identifier), ("birthdate", birthdate)) if v]
    query += [("_count", str(PAGE)), ("_sort", "family")]
    response = fhir.handle(FhirRequest("GET", "Patient", query, base_url=base_url, access=user_access(user)))
    if response.status != 200 or response.resource is None:
        return []
    return [e["resource"] for e in response.resource.get("entry", [])
            if e.get("search", {}).get("mode") == "match" and "resource" in e]


def readable(fhir: FhirServer, user: User, patient_id: str, base_url: str) -> bool:
    try:
        found = fhir.handle(FhirRequest("GET", f"Patient/{patient_id}", base_url=base_url,
                                        access=user_access(user)))
    except FhirError:
        return False
    return found.status == 200


def label(patient: dict[str, Any]) -> tuple[str, str, str]:
    """(name, birth date, identifiers) as shown in the list."""
    names = patient.get("name") or [{}]
    first = names[0] if isinstance(names[0], dict) else {}
    name = first.get("text") or " ".join([*first.get("given", []), first.get("family", "")]).strip() or "(no name)"
    ids = ", ".join(str(i.get("value")) for i in patient.get("identifier", []) if isinstance(i, dict)
                    and i.get("value"))
    return name, str(patient.get("birthDate", "")), ids
