"""Queries answered synchronously. Reads only: the server acts for the listener's configured senders
(``as_system``).

- An analyser's query for its work orders by specimen barcode (IHE LAW: QBP^Q11, query name WOS): RSP^K11 with
  MSA, QAK (OK: orders found, NF: none), the QPD echoed, then one ORC/OBR pair per pending order
  (ServiceRequest active or on-hold whose specimen carries the barcode, or whose own identifier is the barcode).
- The original-mode patient query QRY^A19 (v2 chapter 3.3.19; QRD-8 names the patient by identifier):
  ADR^A19 with MSA, QAK (OK / NF), the QRD echoed, then a PID per Patient found (QRD-7 caps how many).
"""

from __future__ import annotations

from typing import Any

from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from interfaces.mllp.ack import build_ack, wants
from mappings.hl7v2.header import Header
from mappings.hl7v2.message import Encoding, V2Message, escape
from mappings.hl7v2.outbound import OutboundMapper

_PID = OutboundMapper()  # writes PID from a Patient (outbound/ADR_A19.json); fixed data, read once

QUERY_EVENTS = ("QBP^Q11", "QRY^A19")
QUERY_TYPES = frozenset(e.split("^")[0] for e in QUERY_EVENTS)
_PENDING = "active,on-hold,draft"


def _search(server: FhirServer, resource_type: str, query: list[tuple[str, str]], why: str) -> list[dict[str, Any]]:
    response = server.handle(FhirRequest("GET", resource_type, query=query, access=as_system(why)))
    bundle = response.resource if isinstance(response.resource, dict) else {}
    return [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]


def pending_orders(server: FhirServer, barcode: str, sender: str) -> list[dict[str, Any]]:
    why = f"HL7 v2 order query (QBP^Q11) from {sender}"
    orders: dict[str, dict[str, Any]] = {}
    for specimen in _search(server, "Specimen", [("identifier", barcode)], why):
        for order in _search(server, "ServiceRequest", [("specimen", f"Specimen/{specimen['id']}"),
                                                         ("status", _PENDING)], why):
            orders[order["id"]] = order
    for order in _search(server, "ServiceRequest", [("identifier", barcode), ("status", _PENDING)], why):
        orders[order["id"]] = order
    return sorted(orders.values(), key=lambda o: str(o.get("authoredOn", "")) + o["id"])


def answer(server: FhirServer, header: Header, msg: V2Message) -> str:
    """RSP^K11 for a QBP^Q11 (the ACK builder's MSH/MSA, re-typed)."""
    enc = msg.enc
    f, c = enc.field, enc.component
    qpd = next((s for s in msg.segments if s.id == "QPD"), None)
    barcode = qpd.get(3) if qpd is not None else ""
    tag = qpd.get(2) if qpd is not None else ""
    orders = pending_orders(server, barcode, header.sender) if barcode else []
    base = build_ack(header, "AA", enc=enc).rstrip("\r").split("\r")
    msh = base[0].split(f)
    msh[8] = c.join(["RSP", "K11", "RSP_K11"])
    segments = [f.join(msh), base[1]]
    segments.append(f.join(["QAK", escape(tag, enc), "OK" if orders else "NF",
                            f.join(qpd.fields[1:2]) if qpd is not None else ""]))
    if qpd is not None:
        segments.append(f.join(qpd.fields))
    for n, order in enumerate(orders, 1):
        placer = escape(order["id"], enc)
        coding = (order.get("code", {}).get("coding") or [{}])[0]
        code = c.join([escape(str(coding.get("code", "")), enc),
                       escape(str(coding.get("display") or order.get("code", {}).get("text", "")), enc),
                       "LN" if coding.get("system") == "http://loinc.org" else ""]).rstrip(c)
        control = "NW" if order.get("status") == "active" else "HD"
        segments.append(f.join(["ORC", control, f"{placer}{c}FHIR-SERVER", "", "", "", "", "", "", "",
                                escape(str(order.get("authoredOn", "")).replace("-", "")[:8], enc)]))
        segments.append(f.join(["OBR", str(n), f"{placer}{c}FHIR-SERVER", "", code]))
    return "\r".join(segments) + "\r"


def patient_answer(server: FhirServer, header: Header, msg: V2Message) -> str:
    """ADR^A19 for a QRY^A19: the Patients whose identifier is QRD-8.1 (QRD-7.1: at most that many). In the
    standard delimiters, which its MSH-2 declares."""
    enc = Encoding()
    f, c = enc.field, enc.component
    qrd = next((s for s in msg.segments if s.id == "QRD"), None)
    who = qrd.get(8) if qrd is not None else ""
    limit = qrd.get(7) if qrd is not None else ""
    found = _search(server, "Patient", [("identifier", who)], f"HL7 v2 patient query (QRY^A19) from "
                    f"{header.sender}") if who else []
    found = found[:int(limit)] if limit.isdigit() and int(limit) > 0 else found
    base = build_ack(header, "AA", enc=enc).rstrip("\r").split("\r")
    msh = base[0].split(f)
    msh[8] = c.join(["ADR", "A19", "ADR_A19"])
    segments = [f.join(msh), base[1], f.join(["QAK", escape(qrd.get(4) if qrd is not None else "", enc),
                                               "OK" if found else "NF"])]
    if qrd is not None:  # echoed as sent, in our delimiters
        segments.append(f.join(["QRD", *(escape(qrd.get(n), enc) for n in range(1, len(qrd.fields)))]))
    if found:
        pids = _PID.render("ADR_A19", {"patients": found}, sending=("", ""), receiving=("", ""), control_id="")
        segments += pids.rstrip("\r").split("\r")[1:]
    return "\r".join(segments) + "\r"


def responses(server: FhirServer, header: Header, msg: V2Message) -> list[str]:
    """What a query gets back, as MSH-15/16 ask (HL7 v2.5.1 2.9.3 and 5.3; IHE LAW queries are sent so):
    original mode, the RSP^K11 alone; enhanced mode, the accept ACK (CA) unless MSH-15 says NE/ER, then the
    RSP^K11 as the application response unless MSH-16 says NE/ER."""
    respond = patient_answer if header.message_type == "QRY" else answer
    if not header.enhanced:
        return [respond(server, header, msg)]
    out = [build_ack(header, "CA", enc=msg.enc)] if wants(header.accept_ack, True) else []
    if wants(header.application_ack, True):
        out.append(respond(server, header, msg))
    return out
