"""FHIR-native payers (Da Vinci PAS style) behind the same ``ClaimsGateway`` interface as HCX / NHCX.

A payer Organization whose ``endpoint`` is an active Endpoint with connectionType ``hl7-fhir-rest`` is
reached this way. ``send``: ``POST {address}/Claim/$submit`` (or ``CoverageEligibilityRequest/$submit``)
with the request Bundle (a collection, anchor first, only the anchor's own records -- the same builder as for
HCX), through the outbox like every protocol message, with a SMART Backend Services bearer
(interfaces/claims/smart_client.py). The answer comes back synchronously: a ClaimResponse /
CoverageEligibilityResponse (alone or in a Bundle), or a Task while the payer works on it. ``open`` turns
it into what an HCX callback carries (status partial / complete / error + the response bundle), so it is
applied by the same code. A queued answer (``outcome = queued``, or a Task not yet completed) is polled --
``GET {address}/ClaimResponse/[id]`` or ``Task/[id]`` (a completed Task's output names the response) --
through the outbox (topic ``fhir-payer-poll``) after ``FHIR_CLAIMS_POLL_SECONDS``, doubling each time, at
most ``FHIR_CLAIMS_POLL_MAX`` times.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from fhir_server.config import Settings
from fhir_server.storage.access import as_system
from fhir_server.storage.outbox import backoff
from fhir_server.storage.repository import Repository
from interfaces.claims import protocol as p
from interfaces.claims.apply import Applier
from interfaces.claims.exchange import Cycle, audit, cycle_of, with_cycle
from interfaces.claims.gateway import Outgoing, Refused, pem_text
from interfaces.claims.smart_client import BackendToken

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

POLL_TOPIC = "fhir-payer-poll"
CONNECTION_TYPE = "hl7-fhir-rest"  # http://terminology.hl7.org/CodeSystem/endpoint-connection-type
PAS_BUNDLE = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/profile-pas-request-bundle"
ACTIONS = {"Claim": "Claim/$submit", "CoverageEligibilityRequest": "CoverageEligibilityRequest/$submit"}
ON_ACTION = {"Claim/$submit": "/claim/on_submit", "CoverageEligibilityRequest/$submit": "/coverageeligibility/on_check"}
RESPONSES = ("ClaimResponse", "CoverageEligibilityResponse")
POLL = "poll"  # the header ``open`` sets on a queued answer: what to GET next (relative to the payer's base)
TASK_DONE, TASK_FAILED = ("completed",), ("failed", "rejected", "cancelled", "entered-in-error")


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


def _id(value: Any) -> bool:
    """A FHIR id (what we put in a URL path we call with our token)."""
    return isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", value) is not None


def is_fhir_payer(recipient: str) -> bool:
    return recipient.startswith(("https://", "http://"))


class FhirPayerGateway:
    """``ClaimsGateway`` for FHIR payers: the recipient is the payer's FHIR base URL."""

    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        self.participant_code = settings.claims_fhir_client_id or settings.claims_participant_code or "fhir-client"
        self.token = BackendToken(settings.claims_fhir_client_id, pem_text(settings.claims_fhir_private_key),
                                  settings.claims_fhir_key_id, settings.claims_fhir_scope) \
            if settings.claims_fhir_client_id and settings.claims_fhir_private_key else None
        self.timeout = timeout

    def _call(self, method: str, base: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Accept": "application/fhir+json"}
        if body is not None:
            headers["Content-Type"] = "application/fhir+json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token(base)}"
        resp = httpx.request(method, f"{base}/{path}", json=body, headers=headers, timeout=self.timeout)
        if resp.status_code == 401 and self.token is not None:
            self.token.invalidate(base)
            raise ConnectionError("the payer refused our token (401); a new one is fetched for the retry")
        if resp.status_code >= 500 or resp.status_code == 429:
            raise ConnectionError(f"the payer answered {resp.status_code}")  # retried, then dead-lettered
        try:
            answer = resp.json()
        except ValueError:
            answer = None
        if resp.status_code >= 400 or not isinstance(answer, dict):
            issues = answer.get("issue") if isinstance(answer, dict) else None
            text = "; ".join(str(i.get("diagnostics", "")) for i in issues or [])[:400]
            raise Refused(p.ERR_DOMAIN_PROCESSING, f"HTTP {resp.status_code}: {text}")
        return answer

    def send(self, message: Outgoing) -> dict[str, Any]:
        """The payer's synchronous answer (a FHIR resource)."""
        return self._call("POST", message.recipient.rstrip("/"), message.action, message.bundle)

    def poll(self, base: str, ref: str) -> dict[str, Any]:
        """The queued answer ``ref`` as it is now; a completed Task is followed to the response it names."""
        found = self._call("GET", base, ref)
        if found.get("resourceType") == "Task" and found.get("status") in TASK_DONE:
            for out in found.get("output") or []:
                target = str((out.get("valueReference") or {}).get("reference") or "")
                parts = target.split("/")
                if len(parts) == 2 and parts[0] in RESPONSES and _id(parts[1]):  # on the payer's own base only
                    return self._call("GET", base, target)
        return found

    def open(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(headers as an HCX callback would carry them, the response in a collection Bundle or None)."""
        kind = body.get("resourceType")
        if kind == "Task":
            status = str(body.get("status") or "")
            if status in TASK_FAILED or status in TASK_DONE:  # done without a response we could follow
                reason = (body.get("statusReason") or {}).get("text") or f"the payer's Task is {status}"
                return {p.STATUS: p.ERROR, p.ERROR_DETAILS: {"code": p.ERR_DOMAIN_PROCESSING, "message": reason}}, None
            return {p.STATUS: p.PARTIAL, POLL: f"Task/{body['id']}" if _id(body.get("id")) else None}, None
        found = [body] if kind in RESPONSES else [
            e["resource"] for e in body.get("entry") or [] if kind == "Bundle" and isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") in RESPONSES]
        if not found:
            return {p.STATUS: p.ERROR, p.ERROR_DETAILS: {"code": p.ERR_WRONG_DOMAIN_PAYLOAD,
                                                         "message": f"the payer answered a {kind}"}}, None
        response = found[0]
        queued = response.get("outcome") == "queued"
        headers: dict[str, Any] = {p.STATUS: p.PARTIAL if queued else p.COMPLETE}
        if queued:
            headers[POLL] = f"{response['resourceType']}/{response['id']}" if _id(response.get("id")) else None
        return headers, {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": response}]}


def apply_answer(server: FhirServer, gateway: FhirPayerGateway, repo: Repository, anchor: tuple[str, str],
                 content: dict[str, Any], cycle: Cycle, answer: dict[str, Any], *, polls: int,
                 patient: str | None) -> dict[str, Any]:
    """A FHIR payer's answer applied to the anchor's cycle (in ``repo``'s transaction, anchor locked), and the
    next poll queued while it stays queued. Returns the anchor's content to store."""
    settings = server.settings
    rtype, rid = anchor
    headers, bundle = gateway.open(answer)
    poll_ref = headers.pop(POLL, None)
    if headers[p.STATUS] == p.PARTIAL and (bundle is None or cycle.response):
        cycle.status = "partial"  # a Task in progress, or still queued: nothing new to store
    else:
        content = Applier(settings).apply(repo, ON_ACTION[cycle.action], headers, bundle, rtype, rid, content, cycle)
    if cycle.status == "partial":
        if not poll_ref or polls >= settings.claims_poll_max:
            cycle.status = "error"
            cycle.error = f"{p.ERR_SERVICE_UNAVAILABLE}: the payer's answer is still queued after {polls} polls" \
                if poll_ref else f"{p.ERR_WRONG_DOMAIN_PAYLOAD}: a queued answer without an id to poll"
        else:
            due = datetime.now(UTC) + backoff(polls + 1, settings.claims_poll_seconds)
            repo.enqueue(POLL_TOPIC, f"{cycle.correlation_id}:poll:{polls + 1}", {
                "anchor": f"{rtype}/{rid}", "patient": patient, "address": cycle.payer, "poll": poll_ref,
                "correlation_id": cycle.correlation_id, "polls": polls + 1},
                max_attempts=settings.claims_max_attempts, not_before=due)
    return content


class Poller:
    """The outbox handler for POLL_TOPIC: ``{anchor, patient, address, poll, correlation_id, polls}``."""

    def __init__(self, server: FhirServer, gateway: FhirPayerGateway) -> None:
        self.server = server
        self.gateway = gateway

    def __call__(self, key: str, payload: dict[str, Any]) -> None:
        answer = self.gateway.poll(payload["address"], payload["poll"])  # payer down: retried by the outbox
        anchor: str = payload["anchor"]
        rtype, rid = anchor.split("/", 1)
        reason = f"FHIR payer answer polled for {anchor}"

        def work(repo: Repository) -> None:
            current = repo.current(rtype, rid, for_update=True)
            content = current.content if current is not None and not current.deleted else None
            cycle = cycle_of(content, payload["correlation_id"]) if content else None
            if content is None or cycle is None or not cycle.open:
                return  # answered meanwhile (or a repeated delivery): nothing changes
            content = apply_answer(self.server, self.gateway, repo, (rtype, rid), content, cycle, answer,
                                   polls=int(payload["polls"]), patient=payload.get("patient"))
            repo.update(rtype, rid, with_cycle(content, cycle))
            audit(repo, anchor, f"GET {payload['poll']}", inbound=True, participant=payload["address"],
                  error=cycle.error if cycle.status == "error" else None, correlation_id=cycle.correlation_id,
                  patient=payload.get("patient"), reason=reason)

        self.server.uow.run(work, write=True, access=as_system(reason))
