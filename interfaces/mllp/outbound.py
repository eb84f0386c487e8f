"""Orders out: a ServiceRequest for a lab that speaks HL7 v2 goes out as ORM^O01 over MLLP, via the outbox;
one for an analyser (performer a Device) as OML^O33, the IHE LAW work order.

Routing: ServiceRequest.performer -> Organization.endpoint (or Device -> its Location's / owner's endpoint)
-> an active Endpoint whose connectionType is ``hl7v2-mllp`` and whose address is ``mllp://host:port``
(``mllps://`` for TLS). A BEFORE_COMMIT hook puts
one outbox row per order version in the write's own transaction (never a socket inside a request); the
dispatcher delivers it with retries and exponential backoff (storage/outbox.py). The ACK is recorded on
the ServiceRequest as an extension; that update is not itself an order change, so it sends nothing.
Transport failures (refused, timeout, no ACK) retry; an AE/AR is the lab's final answer and is recorded.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from fhir_server.hooks import HookPoint, WriteEvent
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from fhir_server.storage.outbox import OutboxDispatcher
from fhir_server.storage.repository import Repository
from interfaces.mllp.framing import MllpDecoder, encode
from mappings.hl7v2.mapper import OWN_APPLICATION
from mappings.hl7v2.message import parse
from mappings.hl7v2.outbound import OutboundMapper

log = logging.getLogger(__name__)

TOPIC = "hl7v2-order"
CONNECTION_TYPE = "hl7v2-mllp"  # http://terminology.hl7.org/CodeSystem/endpoint-connection-type
ACK_EXTENSION = "urn:fhir-server:extension:hl7v2-order-ack"
SENDABLE = {"active": "NW", "on-hold": "HD", "revoked": "CA"}
# The order sender reads the orders it sends and records the lab's ACK on them: the server's own work.
ORDERS_OUT = as_system("HL7 v2 orders out to the lab (read the order, record its ACK)")


def _material(resource: dict[str, Any] | None) -> dict[str, Any]:
    """The order as the lab sees it: without meta and our own ACK tracking."""
    if resource is None:
        return {}
    out = {k: v for k, v in resource.items() if k not in ("meta", "extension")}
    ext = [e for e in resource.get("extension", []) if e.get("url") != ACK_EXTENSION]
    return {**out, "extension": ext} if ext else out


def _mllp_address(repo: Repository, owner_ref: str) -> str | None:
    """The address of the first active hl7v2-mllp Endpoint of an Organization or Location."""
    parts = owner_ref.split("/")
    if len(parts) != 2 or parts[0] not in ("Organization", "Location"):
        return None
    owner = repo.current(parts[0], parts[1])
    if owner is None or owner.deleted or not owner.content:
        return None
    for endpoint_ref in owner.content.get("endpoint", []):
        ref = endpoint_ref.get("reference", "").split("/")
        if len(ref) != 2 or ref[0] != "Endpoint":
            continue
        endpoint = repo.current("Endpoint", ref[1])
        content = endpoint.content if endpoint and not endpoint.deleted else None
        if content and content.get("status") == "active" and \
                content.get("connectionType", {}).get("code") == CONNECTION_TYPE:
            return str(content.get("address", ""))
    return None


def _endpoint(repo: Repository, order: dict[str, Any]) -> tuple[str, str] | None:
    """(address, message structure): ORM^O01 to a lab Organization's endpoint; OML^O33 (IHE LAW) to an
    analyser Device, reached through its Location's or its owner Organization's endpoint (R4 Device has none)."""
    for performer in order.get("performer", []):
        ref = performer.get("reference", "")
        if ref.startswith("Organization/"):
            address = _mllp_address(repo, ref)
            if address:
                return address, "ORM_O01"
        elif ref.startswith("Device/"):
            device = repo.current("Device", ref.split("/", 1)[1])
            if device is None or device.deleted or not device.content:
                continue
            for holder in (device.content.get("location", {}), device.content.get("owner", {})):
                address = _mllp_address(repo, str(holder.get("reference", "")))
                if address:
                    return address, "OML_O33"
    return None


def order_hook(event: WriteEvent, repo: Repository | None) -> None:
    """BEFORE_COMMIT: enqueue an order version for its lab when what the lab sees has changed."""
    if event.resource_type != "ServiceRequest" or event.resource is None or repo is None or event.version is None:
        return
    order = event.resource
    if order.get("intent") not in ("order", "original-order") or order.get("status") not in SENDABLE:
        return
    previous = event.previous.content if event.previous and not event.previous.deleted else None
    if previous is not None and _material(previous) == _material(order):
        return
    route = _endpoint(repo, order)
    if not route:
        return
    address, structure = route
    was_sent = previous is not None and previous.get("status") in SENDABLE
    control = SENDABLE[order["status"]] if order["status"] != "active" or not was_sent else "XO"
    key = f"ServiceRequest/{event.resource_id}/_history/{event.version.version_id}"
    repo.enqueue(TOPIC, key, {"id": event.resource_id, "version": event.version.version_id, "address": address,
                              "control": control, "structure": structure})


def send_mllp(address: str, message: str, timeout: float = 30.0) -> str:
    """One message, one ACK over a fresh connection (mllp://host:port or mllps://host:port)."""
    url = urlsplit(address)
    if url.scheme not in ("mllp", "mllps") or not url.hostname or not url.port:
        raise ValueError(f"Endpoint address {address!r} is not mllp://host:port")
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as raw:
        sock = ssl.create_default_context().wrap_socket(raw, server_hostname=url.hostname) \
            if url.scheme == "mllps" else raw
        sock.sendall(encode(message.encode("utf-8")))
        decoder = MllpDecoder()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the receiver closed the connection before acknowledging")
            for frame in decoder.feed(chunk):
                if isinstance(frame, bytes):
                    return frame.decode("utf-8", "replace")


class OrderSender:
    """The outbox handler for TOPIC (idempotent by key: the lab de-duplicates by MSH-10 = key's hash)."""

    def __init__(self, server: FhirServer, mapper: OutboundMapper | None = None, *,
                 sending: tuple[str, str] = (OWN_APPLICATION, "HOSPITAL"), timeout: float = 30.0) -> None:
        self.server = server
        self.mapper = mapper or OutboundMapper()
        self.sending = sending
        self.timeout = timeout

    def _get(self, path: str) -> dict[str, Any]:
        response = self.server.handle(FhirRequest("GET", path, access=ORDERS_OUT))
        if response.status != 200 or response.resource is None:
            raise LookupError(f"GET {path} answered {response.status}")
        return response.resource

    def __call__(self, key: str, payload: dict[str, Any]) -> None:
        order = self._get(f"ServiceRequest/{payload['id']}/_history/{payload['version']}")
        subject = order.get("subject", {}).get("reference", "")
        patient = self._get(subject) if subject.startswith("Patient/") else {"resourceType": "Patient"}
        # The same order version always gets the same control id, so a retried delivery is a duplicate
        # the lab recognises (at-least-once delivery, exactly-once effect on a conforming receiver).
        control_id = f"{payload['id'][:40]}-{payload['version']}"
        structure = payload.get("structure", "ORM_O01")
        context = {"patient": patient, "order": order, "control": payload["control"], "placer": self.sending[0]}
        if structure == "OML_O33":  # specimen-centric: the tube the analyser will see (SPM-2 = its barcode)
            specimens = [s.get("reference", "") for s in order.get("specimen", [])]
            context["specimen"] = self._get(specimens[0]) if specimens and specimens[0].startswith("Specimen/") \
                else {"resourceType": "Specimen"}
        message = self.mapper.render(structure, context, sending=self.sending, receiving=("", ""),
                                     control_id=control_id)
        ack = send_mllp(payload["address"], message, self.timeout)
        try:
            msa = parse(ack).first("MSA")
        except ValueError as exc:
            raise ConnectionError("the receiver answered something that is not an ACK") from exc
        if msa is None or msa.get(2) != control_id:
            raise ConnectionError("the ACK does not acknowledge this message")
        code = msa.get(1)
        self._record(payload["id"], code, control_id, msa.get(3))
        if code not in ("AA", "CA"):
            log.warning("order %s was refused by the lab: %s", key, code)

    def _record(self, order_id: str, code: str, control_id: str, text: str) -> None:
        for _attempt in range(5):  # If-Match: a concurrent edit of the order wins, we re-read and retry
            current = self._get(f"ServiceRequest/{order_id}")
            version = current.get("meta", {}).get("versionId", "")
            ext = [e for e in current.get("extension", []) if e.get("url") != ACK_EXTENSION]
            parts = [{"url": "code", "valueCode": code}, {"url": "controlId", "valueString": control_id}]
            if text:
                parts.append({"url": "text", "valueString": text})
            current["extension"] = [*ext, {"url": ACK_EXTENSION, "extension": parts}]
            response = self.server.handle(FhirRequest(
                "PUT", f"ServiceRequest/{order_id}", headers={"content-type": "application/fhir+json",
                                                              "if-match": f'W/"{version}"'}, resource=current,
                access=ORDERS_OUT))
            if response.status in (200, 201):
                return
            if response.status != 412:
                raise RuntimeError(f"recording the ACK on ServiceRequest/{order_id} failed: {response.status}")
        raise RuntimeError(f"ServiceRequest/{order_id} kept changing while recording its ACK")


def install(server: FhirServer, dispatcher: OutboxDispatcher) -> None:
    """Wire orders out into a server: the routing hook and the outbox handler."""
    server.hooks.register(HookPoint.BEFORE_COMMIT, order_hook)
    dispatcher.register(TOPIC, OrderSender(server))
