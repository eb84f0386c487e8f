"""The codings an AuditEvent carries, looked up in the bundled R4 code systems (never typed by hand here:
a code the definitions do not hold fails at import, not in an audit record).

IHE BALP style: REST interactions are DICOM 110110 "Patient Record" with the restful-interaction code as
subtype; sign-in and token issue are 110114 "User Authentication".
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir_server.definitions import bundle_resources

DCM = "http://dicom.nema.org/resources/ontology/DCM"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
SECURITY_ROLE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
# Our own namespaces: who a user or client is here, and the OAuth events FHIR has no code for.
USER_SYSTEM = "urn:fhir-server:user"
CLIENT_SYSTEM = "urn:fhir-server:client"
ROLE_SYSTEM = "urn:fhir-server:role"
AUTH_SUBTYPE = "urn:fhir-server:audit-subtype"

_USED = {
    DCM: ("110110", "110114", "110122", "110150"),
    INTERACTION: ("read", "vread", "update", "patch", "delete", "history-instance", "history-type",
                  "history-system", "create", "search", "search-type", "search-system", "capabilities",
                  "transaction", "batch", "operation"),
    ENTITY_TYPE: ("1", "2"),
    OBJECT_ROLE: ("1", "4", "24"),
    SOURCE_TYPE: ("4",),
    SECURITY_ROLE: ("humanuser",),
}


def _concepts(concepts: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in concepts:
        out[c["code"]] = c.get("display", c["code"])
        out.update(_concepts(c.get("concept", [])))
    return out


@lru_cache(maxsize=1)
def _displays() -> dict[tuple[str, str], str]:
    wanted = set(_USED)
    out: dict[tuple[str, str], str] = {}
    for cs in bundle_resources("valuesets", "CodeSystem"):
        if cs.get("url") in wanted:
            for code, display in _concepts(cs.get("concept", [])).items():
                if code in _USED[cs["url"]]:
                    out[(cs["url"], code)] = display
    missing = [(s, c) for s, codes in _USED.items() for c in codes if (s, c) not in out]
    if missing:
        raise LookupError(f"codes not in the bundled R4 definitions: {missing}")
    return out


def coding(system: str, code: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": _displays()[(system, code)]}


def concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [coding(system, code)]}


def own(code: str, display: str) -> dict[str, str]:
    """An OAuth event code of ours (token issue, refresh): FHIR and DICOM define none."""
    return {"system": AUTH_SUBTYPE, "code": code, "display": display}
