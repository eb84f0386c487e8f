"""Named functions templates call with ``"fn"`` for what plain paths and code maps cannot express."""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import quote

from mappings.hl7v2 import convert
from mappings.hl7v2.errors import DATA_TYPE_ERROR
from mappings.hl7v2.references import FUNCTIONS as REFERENCE_FUNCTIONS
from mappings.hl7v2.values import Context, Function, Json, Value

UCUM = "http://unitsofmeasure.org"


def identifier_system(value: Value, ctx: Context, _node: dict[str, Any]) -> Json:
    """Assigning authority (HD: namespace ^ universal id ^ type) -> identifier system (configurable map)."""
    namespace = value.part(1) if value.level < 2 else value.text()
    universal = value.part(2) if value.level < 2 else ""
    systems = ctx.engine.codemaps["identifier-systems"]["map"]
    # Inside a CX the identifier type (CX-5) refines the authority: "HOSP^MR" and "HOSP^VN" may differ.
    id_type = ctx.engine.text(".5", ctx) if ctx.value is not None and ctx.value is not value else ""
    keys = [f"{namespace}^{id_type}", f"{universal}^{id_type}"] if id_type else []
    for key in (*keys, namespace, universal):
        if key and key in systems:
            return systems[key]
    if universal and re.fullmatch(r"[0-2](\.\d+)+", universal):
        return f"urn:oid:{universal}"
    if namespace:
        return f"{ctx.engine.codemaps['identifier-systems']['base']}{quote(namespace, safe='')}"
    return _sender_authority(ctx, systems)


def sender_authority(_value: Value | None, ctx: Context, _node: dict[str, Any]) -> Json:
    """CX without CX-4 (see ``_sender_authority``)."""
    return _sender_authority(ctx, ctx.engine.codemaps["identifier-systems"]["map"])


def _sender_authority(ctx: Context, systems: dict[str, str]) -> str:
    """No assigning authority: the one configured for the sending facility (MSH-4), else a system scoped to
    the sender (MSH-3|MSH-4), so that a bare number never matches another system's identifiers."""
    facility = ctx.variables.get("sending_facility", "")
    configured = ctx.engine.codemaps.get("facility-authorities", {}).get("map", {}).get(facility)
    if configured:
        return systems.get(configured) or configured
    sender = ctx.variables.get("sender", "")
    return f"{ctx.engine.codemaps['identifier-systems']['sender_base']}{quote(sender, safe='')}"


def coding_system(value: Value, ctx: Context, _node: dict[str, Any]) -> Json:
    """Name of coding system (table 0396) -> FHIR system URI; HL7nnnn -> the v2 code system."""
    name = value.text()
    found = ctx.engine.lookup("coding-systems", name)
    if found:
        return found
    m = re.fullmatch(r"HL7(\d{4})", name.upper())
    if m:
        return f"http://terminology.hl7.org/CodeSystem/v2-{m.group(1)}"
    if re.fullmatch(r"[0-2](\.\d+)+", name):
        return f"urn:oid:{name}"
    return None


def _unit(value: Value | None, ctx: Context) -> dict[str, Any]:
    if value is None:
        return {}
    code = value.text()
    text = value.part(2) if value.level == 0 else ""
    system = value.part(3) if value.level == 0 else ""
    unit = ctx.engine.lookup("ucum-units", code)
    if unit:
        return {"unit": text or code, "system": UCUM, "code": unit}
    if system.upper() in ("UCUM", "ISO+") and code:
        return {"unit": text or code, "system": UCUM, "code": code}
    return {"unit": text or code} if code or text else {}


def quantity(value: Value, ctx: Context, node: dict[str, Any]) -> Json:
    """NM value with units from ``units`` (a path, e.g. OBX-6) mapped to UCUM where known."""
    number = _number(value)
    units = ctx.engine.resolve(node["units"], ctx)
    return {"value": number, **_unit(units[0] if units else None, ctx)}


def _number(value: Value, text: str | None = None) -> int | float:
    try:
        return convert.to_decimal(value.text() if text is None else text)
    except convert.ConversionError as exc:
        raise value.error(DATA_TYPE_ERROR, str(exc)) from exc


def _sn(value: Value) -> tuple[str, str, str, str]:
    # SN: comparator ^ num1 ^ separator/suffix ^ num2
    parts = [value.part(i) for i in range(1, 5)]
    return parts[0], parts[1], parts[2], parts[3]


# SN -> value[x] as the v2-to-FHIR IG's OBX-5 rows decide it: "<>" (not equal) and the "+" suffix ("2+")
# have no numeric FHIR form and become valueString, as does any SN that fits none of the other forms.
def _sn_kind(value: Value) -> str:
    comparator, num1, sep, num2 = _sn(value)
    if comparator == "<>" or sep == "+":
        return "string"
    if not sep and not num2 and num1:
        return "quantity"
    if sep == "-" and num2:
        return "range"
    if sep in (":", "/") and num2:
        return "ratio"
    return "string"


def sn_quantity(value: Value, ctx: Context, node: dict[str, Any]) -> Json:
    comparator, num1, _sep, _num2 = _sn(value)
    if _sn_kind(value) != "quantity":
        return None
    units = ctx.engine.resolve(node["units"], ctx)
    out: dict[str, Any] = {"value": _number(value, num1), **_unit(units[0] if units else None, ctx)}
    if comparator in ("<", ">", "<=", ">="):
        out["comparator"] = comparator
    elif comparator == "=":
        pass
    elif comparator:
        raise value.error(DATA_TYPE_ERROR, f"SN comparator {comparator!r} is not one of > < >= <= = <>")
    return out


def sn_range(value: Value, ctx: Context, node: dict[str, Any]) -> Json:
    _comparator, num1, _sep, num2 = _sn(value)
    if _sn_kind(value) != "range":
        return None
    units = ctx.engine.resolve(node["units"], ctx)
    unit = _unit(units[0] if units else None, ctx)
    return {"low": {"value": _number(value, num1), **unit}, "high": {"value": _number(value, num2), **unit}}


def sn_ratio(value: Value, _ctx: Context, _node: dict[str, Any]) -> Json:
    _comparator, num1, _sep, num2 = _sn(value)
    if _sn_kind(value) != "ratio":
        return None
    return {"numerator": {"value": _number(value, num1)}, "denominator": {"value": _number(value, num2)}}


def sn_text(value: Value, ctx: Context, node: dict[str, Any]) -> Json:
    """SN the IG makes a valueString: "OBX-5.1 OBX-5.2 OBX-5.3 OBX-5.4 OBX-6" (empty parts left out)."""
    if _sn_kind(value) != "string":
        return None
    units = ctx.engine.resolve(node["units"], ctx)
    parts = [*_sn(value), units[0].text() if units else ""]
    return " ".join(p for p in parts if p) or None


def components_text(value: Value, _ctx: Context, node: dict[str, Any]) -> Json:
    """Components 1 and 2 joined by ``separator`` (VR: "low-high", as the IG writes OBX-5.1+"-"+OBX-5.2)."""
    low, high = value.part(1), value.part(2)
    return f"{low}{node['separator']}{high}" if low or high else None


def reference_range(value: Value, ctx: Context, node: dict[str, Any]) -> Json:
    """OBX-7 ``low-high``, ``low_high``, ``<x``, ``>x`` -> Observation.referenceRange; text otherwise."""
    text = value.text()
    units = ctx.engine.resolve(node["units"], ctx)
    unit = _unit(units[0] if units else None, ctx)
    number = r"[+-]?\d+(?:\.\d+)?"
    m = re.fullmatch(rf"\s*({number})\s*[-_]\s*({number})\s*", text)
    if m:
        return {"low": {"value": convert.to_decimal(m.group(1)), **unit},
                "high": {"value": convert.to_decimal(m.group(2)), **unit}, "text": text}
    m = re.fullmatch(rf"\s*(<=?|>=?)\s*({number})\s*", text)
    if m:
        bound = "high" if m.group(1).startswith("<") else "low"
        return {bound: {"value": convert.to_decimal(m.group(2)), **unit}, "text": text}
    return {"text": text}


def joined_text(value: Value, ctx: Context, node: dict[str, Any]) -> Json:
    """All repetitions of a text field (TX/FT lines) joined by newlines."""
    lines = [v.text(formatted=True) for v in ctx.engine.resolve(node["$"], ctx)]
    return "\n".join(lines).strip() or None


def person_name(value: Value, _ctx: Context, _node: dict[str, Any]) -> Json:
    """XCN/XPN -> display text ("Given Middle Family"); XCN has the name from component 2."""
    start = 2 if _node.get("xcn") else 1
    family = value.child(start)
    given = [value.child(start + i) for i in (1, 2)]
    parts = [g.text() for g in given if g] + ([family.part(1)] if family else [])
    return " ".join(p for p in parts if p) or None


def location_display(value: Value, _ctx: Context, _node: dict[str, Any]) -> Json:
    """PL (point of care ^ room ^ bed ^ facility ...) -> a readable display."""
    parts = [value.child(i) for i in (4, 1, 2, 3)]
    return " ".join(p.part(1) if p else "" for p in parts).strip() or None


def telecom_value(value: Value, _ctx: Context, _node: dict[str, Any]) -> Json:
    """XTN: email (4), else country/area/local/extension (5-8), else the old free text (1)."""
    parts = {i: value.part(i) for i in range(1, 9)}
    if parts[4]:
        return parts[4]
    if parts[6] or parts[7]:
        number = " ".join(p for p in (f"+{parts[5]}" if parts[5] else "", parts[6], parts[7]) if p)
        return number + (f" x{parts[8]}" if parts[8] else "")
    return parts[1] or None


def telecom_system(value: Value, ctx: Context, _node: dict[str, Any]) -> Json:
    equipment = value.part(3)
    if value.child(4):
        return "email"
    return ctx.engine.lookup("telecom-equipment", equipment) or "phone"


def encounter_status(_value: Value | None, ctx: Context, _node: dict[str, Any]) -> Json:
    """By trigger event; an update (A08) with a discharge time is finished."""
    event = ctx.variables.get("event", "")
    if event == "ADT^A08" and ctx.engine.text("PV1-45", ctx):
        return "finished"
    return ctx.engine.lookup("encounter-status-by-event", event)


def event_lookup(_value: Value | None, ctx: Context, node: dict[str, Any]) -> Json:
    """A code map keyed by the message's event (e.g. SIU^S15 -> cancelled)."""
    return ctx.engine.lookup(node["map"], ctx.variables.get("event", ""))


_MEDIA_TYPES = {"PDF": "application/pdf", "RTF": "application/rtf", "HTML": "text/html", "XML": "text/xml",
                "JPEG": "image/jpeg", "JPG": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff",
                "GIF": "image/gif", "DICOM": "application/dicom", "TEXT": "text/plain", "OCTET-STREAM":
                "application/octet-stream", "MSWORD": "application/msword"}


def _ed_attachment(ed: Value) -> dict[str, Any] | None:
    """ED (source ^ type ^ subtype ^ encoding ^ data) -> Attachment; bad Base64/hex is a data type error."""
    subtype, encoding, data = ed.part(3).upper(), ed.part(4).upper(), ed.child(5)
    raw = data.raw if data else ""
    if not raw:
        return None
    try:
        if encoding == "BASE64":
            payload = base64.b64decode(raw, validate=True)
        elif encoding == "HEX":
            payload = bytes.fromhex(raw)
        else:
            payload = (data.text() if data else "").encode()
    except ValueError as exc:
        raise ed.error(DATA_TYPE_ERROR, f"OBX-5.5 is not valid {encoding or 'data'}") from exc
    return {"contentType": _MEDIA_TYPES.get(subtype, "application/octet-stream"),
            "data": base64.b64encode(payload).decode()}


def ed_attachment(value: Value, _ctx: Context, _node: dict[str, Any]) -> Json:
    """An ED value (OBX-5 of an ED result: a referral's letter or scan) -> Attachment."""
    return _ed_attachment(value)


def document_attachment(_value: Value | None, ctx: Context, _node: dict[str, Any]) -> Json:
    """MDM document content from the OBX segments: an ED (encapsulated data) OBX as is, else the text lines."""
    obx = [seg for seg in ctx.msg.segments[ctx.seg.index + 1:] if seg.id == "OBX"]
    for seg in obx:
        if seg.get(2).upper() == "ED":
            values = ctx.engine.resolve("OBX-5", ctx.at(seg))
            attachment = _ed_attachment(values[0]) if values else None
            if attachment:
                return attachment
    lines = [v.text() for seg in obx for v in ctx.engine.resolve("OBX-5", ctx.at(seg))]
    if not any(lines):
        return None
    return {"contentType": "text/plain; charset=utf-8", "data": base64.b64encode("\n".join(lines).encode()).decode()}


TEXT_TYPES = ("TX", "FT", "ST")


def presented_form(_value: Value | None, ctx: Context, _node: dict[str, Any]) -> Json:
    """ORU: the ED results of this OBR's group (a PDF report) -> DiagnosticReport.presentedForm; and its text
    lines without an observation id (OBX-3 empty, OBX-2 TX/FT/ST: a narrative report sent line by line, not
    observations) as one text/plain attachment."""
    out = []
    lines: list[str] = []
    for seg in ctx.msg.segments[ctx.seg.index + 1:]:
        if seg.id == ctx.seg.id:
            break  # the next order group
        kind = seg.get(2).upper() if seg.id == "OBX" else ""
        if kind == "ED":
            for value in ctx.engine.resolve("OBX-5", ctx.at(seg)):
                attachment = _ed_attachment(value)
                if attachment:
                    out.append({**attachment, "title": seg.get(3, comp=2) or seg.get(3)})
        elif kind in TEXT_TYPES and not seg.get(3):
            lines.extend(v.text(formatted=True) for v in ctx.engine.resolve("OBX-5", ctx.at(seg)))
    if any(lines):
        out.append({"contentType": "text/plain; charset=utf-8", "title": "Report text",
                    "data": base64.b64encode("\n".join(lines).strip().encode()).decode()})
    return out or None


def own_order(_value: Value | None, ctx: Context, _node: dict[str, Any]) -> Json:
    """OBR-2 naming one of our own orders (sent out by orders-out: placer number = our ServiceRequest id,
    namespace = our application name) -> a literal reference to that ServiceRequest."""
    own = ctx.variables.get("own_application", "")
    placer = ctx.engine.resolve("OBR-2", ctx)
    if not own or not placer or placer[0].part(2) != own:
        return None
    order_id = placer[0].part(1)
    return {"reference": f"ServiceRequest/{order_id}"} if re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", order_id) else None


_QC_ROLES = {"Q", "C", "E", "F", "O", "V"}  # table 0369: control, calibrator, electronic QC, proficiency, ...


def qc_role(_value: Value | None, ctx: Context, _node: dict[str, Any]) -> Json:
    """SPM-11 of the specimen heading this result in a specimen-centric message (OUL^R22-R24), when it says
    the result is quality control rather than a patient's (table 0369)."""
    if not ctx.variables.get("event", "").startswith("OUL^"):
        return None
    role = ctx.engine.text("SPM-11", ctx).upper()
    return role if role in _QC_ROLES else None


def text_concept(value: Value, _ctx: Context, _node: dict[str, Any]) -> Json:
    """A free-text field (ST, or an IS code without a table) as a CodeableConcept with only its text."""
    text = value.text()
    return {"text": text} if text else None


def person_display(value: Value, ctx: Context, node: dict[str, Any]) -> Json:
    """An XPN as a Reference's display (a party named but not identified, e.g. GT1-3)."""
    name = person_name(value, ctx, node)
    return {"display": name} if name else None


FUNCTIONS: dict[str, Function] = {
    "identifier_system": identifier_system, "coding_system": coding_system, "quantity": quantity,
    "sn_quantity": sn_quantity, "sn_range": sn_range, "sn_ratio": sn_ratio, "sn_text": sn_text,
    "components_text": components_text, "reference_range": reference_range,
    "joined_text": joined_text, "person_name": person_name, "location_display": location_display,
    "telecom_value": telecom_value, "telecom_system": telecom_system, "encounter_status": encounter_status,
    "event_lookup": event_lookup, "document_attachment": document_attachment, "ed_attachment": ed_attachment,
    "own_order": own_order, "presented_form": presented_form, "sender_authority": sender_authority,
    "text_concept": text_concept, "qc_role": qc_role, "person_display": person_display,
}
# Practitioners and locations the message names (references.py), and what item 6's families need.
FUNCTIONS.update(REFERENCE_FUNCTIONS)
