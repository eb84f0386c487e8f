"""Which REST interaction a request is, for its AuditEvent: restful-interaction code, action, target.

Mirrors the URL patterns of ``rest/router.py`` (http.html), without running anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from fhir_server.rest.request import FhirRequest

_OP = re.compile(r"^\$[A-Za-z][A-Za-z0-9\-]*$")
_WRITES = {"POST": ("create", "C"), "PUT": ("update", "U"), "PATCH": ("patch", "U"), "DELETE": ("delete", "D")}
# Discovery is public and asked for constantly; it reveals nothing about anyone: not audited.
UNAUDITED = {"metadata", ".well-known"}


@dataclass(frozen=True)
class Interaction:
    code: str  # restful-interaction
    action: str  # C R U D E
    resource_type: str | None = None
    targets: tuple[str, ...] = field(default=())  # "Type/id"

    @property
    def reads(self) -> bool:
        return self.action == "R"

    @property
    def searches(self) -> bool:
        return self.code.startswith("search")


def classify(method: str, path: str) -> Interaction | None:
    """None for what is not audited (discovery)."""
    verb = "GET" if method == "HEAD" else method
    if "\x00" in path:  # a refused request's target, as it was sent: PostgreSQL stores no NUL (issue 12)
        path = path.replace("\x00", "%00")
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts or parts == ["_search"]:
        if verb == "POST" and not parts:
            return Interaction("transaction", "E")  # or batch: the Bundle says which (see service.py)
        return Interaction("search-system", "R")
    head = parts[0]
    if head in UNAUDITED:
        return None
    if head == "_history":
        return Interaction("history-system", "R")
    if _OP.match(head):
        return Interaction("operation", "E")
    rtype = head
    if len(parts) == 1:
        if verb == "GET":
            return Interaction("search-type", "R", rtype)
        code, action = _WRITES.get(verb, ("operation", "E"))
        return Interaction(code, action, rtype)
    second = parts[1]
    if second == "_search" and len(parts) == 2:
        return Interaction("search-type", "R", rtype)
    if second == "_history" and len(parts) == 2:
        return Interaction("history-type", "R", rtype)
    if _OP.match(second):
        return Interaction("operation", "E", rtype)
    target = (f"{rtype}/{second}",)
    if len(parts) == 2:
        if verb == "GET":
            return Interaction("read", "R", rtype, target)
        code, action = _WRITES.get(verb, ("operation", "E"))
        return Interaction(code, action, rtype, target)
    third = parts[2]
    if third == "_history":
        return Interaction("history-instance" if len(parts) == 3 else "vread", "R", rtype, target)
    if _OP.match(third):
        return Interaction("operation", "E", rtype, target)
    return Interaction("search", "R", third, target)  # compartment search: Patient/1/Observation


def query_text(req: FhirRequest) -> str:
    """The search as asked (URL query, plus the form body of POST _search): PII, kept only base64 in the
    AuditEvent (entity.query), never logged."""
    pairs = list(req.query)
    if req.method == "POST" and req.body and req.content_type == "application/x-www-form-urlencoded":
        pairs += parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True)
    path = req.path.strip("/")
    return f"{path}?{urlencode(pairs)}" if pairs else path
