"""FHIR-native payers (Da Vinci PAS style): ``Claim/$submit`` on the payer's FHIR base instead of HCX.

A payer Organization whose ``endpoint`` is an active Endpoint with connectionType ``hl7-fhir-rest`` is
reached this way: ``POST {address}/Claim/$submit`` with the request Bundle (a collection, Claim first, only the
claim's own records -- the same builder as for HCX), through the outbox (topic ``fhir-payer-claim``: retries,
dead letter). The payer's ClaimResponse (alone or first in a Bundle) is stored exactly as an HCX answer is;
``outcome = queued`` leaves the exchange open (``partial``). A 4xx is the payer's final refusal, recorded on
the exchange. Not yet: polling a queued answer, SMART backend-services tokens (private_key_jwt).
"""

from __future__ import annotations

from typing import Any

import httpx

from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository
from interfaces.claims import protocol as p
from interfaces.claims.apply import Applier
from interfaces.claims.exchange import audit, cycle_of, with_cycle

TOPIC = "fhir-payer-claim"
CONNECTION_TYPE = "hl7-fhir-rest"  # http://terminology.hl7.org/CodeSystem/endpoint-connection-type
PAS_BUNDLE = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/profile-pas-request-bundle"
ACTION = "Claim/$submit"


def fhir_endpoint(repo: Repository, organization: dict[str, Any]) -> str | None:
    """The payer's FHIR base, when it has one."""
    for ref in organization.get("endpoint") or []:
        parts = str(ref.get("reference", "")).split("/")
        if len(parts) != 2 or parts[0] != "Endpoint":
            continue
        endpoint = repo.read("Endpoint", parts[1]).content or {}
        if endpoint.get("status") == "active" and (endpoint.get("connectionType") or {}).get("code") == CONNECTION_TYPE:
            return str(endpoint.get("address") or "").rstrip("/") or None
    return None


class FhirPayerSender:
    """The outbox handler for TOPIC: payload ``{anchor, patient, address, correlation_id, bundle}``."""

    def __init__(self, server: FhirServer, timeout: float = 30.0) -> None:
        self.server = server
        self.applier = Applier(server.settings)
        self.timeout = timeout

    def __call__(self, key: str, payload: dict[str, Any]) -> None:
        resp = httpx.post(f"{payload['address']}/{ACTION}", json=payload["bundle"], timeout=self.timeout,
                          headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"})
        if resp.status_code >= 500 or resp.status_code == 429:
            raise ConnectionError(f"the payer answered {resp.status_code}")  # retried, then dead-lettered
        try:
            body = resp.json()
        except ValueError:
            body = {}
        answer: dict[str, Any] | None = None
        error: str | None = None
        if resp.status_code >= 400 or not isinstance(body, dict):
            issues = body.get("issue") if isinstance(body, dict) else None
            error = f"HTTP {resp.status_code}: " + "; ".join(str(i.get("diagnostics", "")) for i in issues or [])[:400]
        elif body.get("resourceType") == "ClaimResponse":
            answer = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": body}]}
        elif body.get("resourceType") == "Bundle":
            answer = body
        else:
            error = f"{p.ERR_WRONG_DOMAIN_PAYLOAD}: the payer answered a {body.get('resourceType')}"
        self._apply(payload, answer, error)

    def _apply(self, payload: dict[str, Any], answer: dict[str, Any] | None, error: str | None) -> None:
        anchor: str = payload["anchor"]
        rtype, rid = anchor.split("/", 1)
        reason = f"FHIR payer response for {anchor}"

        def work(repo: Repository) -> None:
            current = repo.current(rtype, rid, for_update=True)
            content = current.content if current is not None and not current.deleted else None
            cycle = cycle_of(content, payload["correlation_id"]) if content else None
            if content is None or cycle is None or not cycle.open:
                return  # answered before (a retried delivery): nothing changes
            if error is not None:
                cycle.status, cycle.error = "error", error
            else:
                entries = (answer or {}).get("entry", [])
                queued = any((e.get("resource") or {}).get("outcome") == "queued" for e in entries)
                self.applier.apply(repo, "/claim/on_submit", {p.STATUS: p.PARTIAL if queued else p.COMPLETE},
                                   answer, rtype, rid, content, cycle)
            repo.update(rtype, rid, with_cycle(content, cycle))
            audit(repo, anchor, ACTION, inbound=False, participant=payload["address"], error=error,
                  correlation_id=cycle.correlation_id, patient=payload.get("patient"), reason=reason)

        self.server.uow.run(work, write=True, access=as_system(reason))
