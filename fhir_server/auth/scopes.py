"""SMART scopes, v1 (``patient/Observation.read``) and v2 (``patient/Observation.rs?category=...``).

Real clients send repeated scopes, v1 and v2 mixed, and scopes we do not know: repeats collapse, unknown
scopes are ignored (never an error). http://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

CONTEXTS = ("patient", "user", "system")
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
ORDER = "cruds"
_RESOURCE_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(\?.*)?$")
# Scopes that are not about resources, granted as they are when the client may have them.
OTHER_SCOPES = ("openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
                "offline_access", "online_access")


@dataclass(frozen=True)
class ResourceScope:
    context: str  # patient | user | system
    resource_type: str  # a type or "*"
    permissions: str  # subset of "cruds", in that order
    constraints: tuple[tuple[str, str], ...] = ()  # v2 granular scopes: ?category=...

    def text(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.constraints)
        return f"{self.context}/{self.resource_type}.{self.permissions}" + (f"?{query}" if query else "")

    def covers_type(self, resource_type: str) -> bool:
        return self.resource_type in ("*", resource_type)


def parse_resource_scope(text: str) -> ResourceScope | None:
    m = _RESOURCE_SCOPE.match(text)
    if m is None:
        return None
    context, rtype, perms, query = m.groups()
    if perms in V1_PERMISSIONS:
        letters = V1_PERMISSIONS[perms]
    elif perms and all(c in ORDER for c in perms) and len(set(perms)) == len(perms) \
            and perms == "".join(c for c in ORDER if c in perms):
        letters = perms
    else:
        return None  # e.g. "patient/Observation.sr" (letters out of order) is not a v2 scope
    constraints = tuple(sorted(parse_qsl(query[1:], keep_blank_values=False))) if query else ()
    return ResourceScope(context, rtype, letters, constraints)


def split(scope: str | None) -> list[str]:
    """Scope tokens in order of first appearance, repeats removed."""
    seen: dict[str, None] = {}
    for token in (scope or "").split():
        seen.setdefault(token, None)
    return list(seen)


def resource_scopes(scope: str | None) -> list[ResourceScope]:
    return [s for s in (parse_resource_scope(t) for t in split(scope)) if s is not None]


def _intersect(a: ResourceScope, b: ResourceScope) -> ResourceScope | None:
    if a.context != b.context:
        return None
    if a.resource_type == "*":
        rtype = b.resource_type
    elif b.resource_type in ("*", a.resource_type):
        rtype = a.resource_type
    else:
        return None
    perms = "".join(c for c in ORDER if c in a.permissions and c in b.permissions)
    if not perms:
        return None
    return ResourceScope(a.context, rtype, perms, tuple(sorted(set(a.constraints) | set(b.constraints))))


def grantable(requested: str | None, allowed: str | None) -> str:
    """The requested scopes a client may have (requested ∩ the client's allowed), as a scope string."""
    allowed_tokens = split(allowed)
    allowed_resources = resource_scopes(allowed)
    out: dict[str, None] = {}
    for token in split(requested):
        parsed = parse_resource_scope(token)
        if parsed is None:
            if token in OTHER_SCOPES and token in allowed_tokens:
                out.setdefault(token, None)
            continue
        for limit in allowed_resources:
            both = _intersect(parsed, limit)
            if both is not None:
                out.setdefault(token if both == parsed else both.text(), None)
    return " ".join(out)


def describe(token: str) -> str:
    """Plain words for the consent page."""
    parsed = parse_resource_scope(token)
    if parsed is None:
        return {"openid": "Confirm your identity", "fhirUser": "Know who you are in the record",
                "launch": "Use the context the EHR launched it in", "launch/patient": "Work with one patient",
                "launch/encounter": "Work with one encounter", "offline_access": "Stay signed in (offline access)",
                "online_access": "Stay signed in while you are online",
                "profile": "Read your profile"}.get(token, token)
    words = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
    what = "all data" if parsed.resource_type == "*" else f"{parsed.resource_type} records"
    whose = {"patient": "of the selected patient", "user": "you can access", "system": "(system)"}[parsed.context]
    verbs = ", ".join(words[c] for c in parsed.permissions)
    extra = "".join(f" where {k} is {v}" for k, v in parsed.constraints)
    return f"{verbs.capitalize()} {what} {whose}{extra}"
