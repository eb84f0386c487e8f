"""How the demo hospital is written: FHIR requests through the server's own core (``FhirServer.handle``), each
as a user of the role that would make it, so every workflow rule holds for the demo data as for an app's."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from fhir_server.auth.access import AccessContext
from fhir_server.auth.scopes import resource_scopes
from fhir_server.rest.request import FhirRequest

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer


class SeedError(Exception):
    """A demo write the server refused: the seed's own bug, shown with the server's OperationOutcome."""


def user(role: str, fhir_user: str | None = None) -> AccessContext:
    """What a signed-in user of ``role`` with ``user/*.cruds`` may do (the role table still limits it)."""
    return AccessContext(tuple(resource_scopes("user/*.cruds")), role, None, fhir_user,
                         subject=f"seed-demo {role}")


def urn(rng_bits: int) -> str:
    return f"urn:uuid:{uuid.UUID(int=rng_bits)}"


@dataclass
class Caller:
    server: FhirServer

    def call(self, access: AccessContext, method: str, path: str, body: Any = None,
             query: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        req = FhirRequest(method, path, query or [], {"content-type": "application/fhir+json",
                                                      "accept": "application/fhir+json",
                                                      "prefer": "return=representation"},
                          orjson.dumps(body) if body is not None else None, access=access)
        res = self.server.handle(req)
        if res.status >= 400:
            raise SeedError(f"{method} {path} as {access.role}: {res.status} {orjson.dumps(res.resource).decode()}")
        return res.resource or {}

    def transaction(self, access: AccessContext,
                    entries: Sequence[tuple[str, str, dict[str, Any] | None, str | None]]) -> list[dict[str, Any]]:
        """One transaction Bundle of (method, url, resource, fullUrl) entries; the created/updated resources
        in entry order."""
        if not entries:
            return []
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {**({"fullUrl": full} if full else {}), **({"resource": res} if res is not None else {}),
             "request": {"method": method, "url": url}} for method, url, res, full in entries]}
        out = self.call(access, "POST", "", bundle)
        return [e.get("resource") or {} for e in out.get("entry") or []]

    def search(self, access: AccessContext, rtype: str, query: list[tuple[str, str]], *,
               every: bool = False) -> list[dict[str, Any]]:
        """The matches of the first page of 1000, or with ``every`` of every page (following ``next``)."""
        found: list[dict[str, Any]] = []
        query = [*query, ("_count", "1000")]
        while True:
            page = self.call(access, "GET", rtype, query=query)
            found += [e["resource"] for e in page.get("entry") or [] if e.get("search", {}).get("mode") == "match"]
            after = next((link["url"] for link in page.get("link") or [] if link.get("relation") == "next"), None)
            if not every or after is None:
                return found
            query = parse_qsl(urlsplit(after).query)
