"""``Idempotency-Key`` on a create (IETF draft-ietf-httpapi-idempotency-key-header): a retried POST makes
nothing new and answers with what the first one made.

The key is kept on the resource itself, as an ``identifier`` in ``IDEMPOTENCY_KEY_SYSTEM``, and the create
becomes a conditional create on it (``If-None-Exist: identifier=<system>|<key>``): the conditional create's
transaction lock (an advisory lock on PostgreSQL, the database lock on SQLite) serialises concurrent retries,
so 50 racing retries make one resource and the other 49 answer 200 with it. A hospital area may add its own
unique index on the key (billing does) so a second copy could never commit whatever path wrote it.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any
from urllib.parse import quote

from fhir_server.definitions import resource_structure_definitions
from fhir_server.errors import INVALID, NOT_SUPPORTED, FhirError

IDEMPOTENCY_KEY_SYSTEM = "urn:ietf:params:http:header:Idempotency-Key"
HEADER = "idempotency-key"
# Visible ASCII without the token search syntax characters (| , $ \\), so the key is its own search value.
_KEY = re.compile(r"^[!-~]{1,200}$")
_SYNTAX = set("|,$\\")


@cache
def _has_identifier_list(resource_type: str) -> bool:
    sd = resource_structure_definitions().get(resource_type) or {}
    for element in (sd.get("snapshot") or {}).get("element") or []:
        if element.get("path") == f"{resource_type}.identifier":
            return bool(element.get("max") == "*")
    return False


def idempotent_criteria(resource: dict[str, Any], resource_type: str, key: str) -> str:
    """Record ``key`` on ``resource`` (in place) and return the If-None-Exist criteria that find it again."""
    key = key.strip().strip('"')
    if not _KEY.match(key) or _SYNTAX & set(key):
        raise FhirError(400, INVALID, "Idempotency-Key must be 1-200 visible ASCII characters other than | , $ \\",
                        ("Idempotency-Key",))
    if not _has_identifier_list(resource_type):
        raise FhirError(400, NOT_SUPPORTED, f"Idempotency-Key is not supported on {resource_type} (it has no "
                                            "repeating identifier to keep the key in)", ("Idempotency-Key",))
    identifiers = [i for i in resource.get("identifier") or [] if i.get("system") != IDEMPOTENCY_KEY_SYSTEM]
    resource["identifier"] = [*identifiers, {"system": IDEMPOTENCY_KEY_SYSTEM, "value": key}]
    return "identifier=" + quote(f"{IDEMPOTENCY_KEY_SYSTEM}|{key}", safe="")
