"""The order lab results report on, looked up on the FHIR server for the mapper (mappings/hl7v2/law.py decides
which key wins; this answers each key): by specimen barcode, by order identifier, by id.

Reads only, as the server itself: the message was accepted from a configured sender (the listener's addresses
and certificates), and finding the order it reports on is part of filing it.
"""

from __future__ import annotations

from typing import Any

from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from mappings.hl7v2.law import Candidate, Found, search_escape

_WHY = "HL7 v2 results in: find the order (ServiceRequest) and specimen they report on"
# An order entered in error is not one results can be for.
_LIVE = "draft,active,on-hold,revoked,completed,unknown"


class ServerOrders:
    """``OrderResolver`` on one hospital's FHIR server."""

    def __init__(self, server: FhirServer) -> None:
        self.server = server

    def _search(self, resource_type: str, query: list[tuple[str, str]]) -> list[dict[str, Any]]:
        response = self.server.handle(FhirRequest("GET", resource_type, query=[*query, ("_count", "50")],
                                                  access=as_system(_WHY)))
        bundle = response.resource if response.status == 200 and isinstance(response.resource, dict) else {}
        return [e["resource"] for e in bundle.get("entry", [])
                if e.get("search", {}).get("mode", "match") == "match"]

    @staticmethod
    def _found(orders: list[dict[str, Any]]) -> Found:
        return {f"ServiceRequest/{o['id']}": Candidate(
            str(o.get("subject", {}).get("reference", "")),
            frozenset(str(c["code"]) for c in o.get("code", {}).get("coding", []) if c.get("code"))) for o in orders}

    def orders_for_barcode(self, barcode: str) -> Found:
        token = search_escape(barcode)
        specimens = {s["id"] for param in ("identifier", "container-id")
                     for s in self._search("Specimen", [(param, token)])}
        found: Found = {}
        if specimens:
            refs = ",".join(f"Specimen/{sid}" for sid in sorted(specimens))
            found.update(self._found(self._search("ServiceRequest", [("specimen", refs), ("status", _LIVE)])))
        found.update(self.orders_with_identifier(token))
        return found

    def orders_with_identifier(self, token: str) -> Found:
        return self._found(self._search("ServiceRequest", [("identifier", token), ("status", _LIVE)]))

    def order(self, order_id: str) -> Found:
        response = self.server.handle(FhirRequest("GET", f"ServiceRequest/{order_id}", access=as_system(_WHY)))
        if response.status != 200 or not isinstance(response.resource, dict):
            return {}
        if response.resource.get("status") == "entered-in-error":
            return {}
        return self._found([response.resource])

    def specimen_of(self, order: str, barcodes: tuple[str, ...]) -> tuple[str, dict[str, Any]] | None:
        found = self.server.handle(FhirRequest("GET", order, access=as_system(_WHY)))
        if found.status != 200 or not isinstance(found.resource, dict):
            return None
        for ref in (s.get("reference", "") for s in found.resource.get("specimen", [])):
            if not ref.startswith("Specimen/"):
                continue
            response = self.server.handle(FhirRequest("GET", ref, access=as_system(_WHY)))
            specimen = response.resource if response.status == 200 and isinstance(response.resource, dict) else {}
            held = {i.get("value") for i in specimen.get("identifier", [])} | \
                {i.get("value") for c in specimen.get("container", []) for i in c.get("identifier", [])}
            if held & set(barcodes):
                return ref, specimen
        return None
