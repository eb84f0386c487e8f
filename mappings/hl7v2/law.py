"""Lab analysers (IHE Laboratory Analytical Workflow, LAW) and specimen-centric results (OUL^R22-R24): the order
a result group reports on, the specimen's containers (SAC, INV) and the analyser (OBX-18, EQU).

Matching, for a rule with ``"request": "match"`` (the ServiceRequest of an OBR group). The server is asked, in
this order, for the orders of:
1. the specimen barcode: SPM-2 (placer / filler assigned specimen id) and SAC-3 (container id) of the group's
   specimen -> the orders of the Specimens holding that identifier or container id, and an order whose own
   identifier the barcode is;
2. the placer number: OBR-2, else ORC-2 (in our own namespace, MSH-3 of our orders out: the ServiceRequest id),
   scoped by its assigning authority (the Identifier.system its namespace maps to);
3. the filler number: OBR-3, else ORC-3.
The first key that finds any orders decides; several are narrowed by the later keys (those that agree with
some of them), then by the test code (OBR-4 against ServiceRequest.code: one tube, several tests). Still
several: AE 205 naming the field. None: the order is written from the message when the
rule's ``create`` test holds (the message names the patient), else AE 204 naming SPM-2 (or OBR-2).
Results sent without PID (analysers) take the patient of the order they were matched to (``order_subject``).
The pure part lives here; the lookups are the resolver's (interfaces/mllp/result_match.py, on the FHIR server).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mappings.hl7v2.errors import DUPLICATE_KEY_IDENTIFIER, UNKNOWN_KEY_IDENTIFIER, ErrorDetail, MappingError
from mappings.hl7v2.message import Segment, V2Message

if TYPE_CHECKING:
    from mappings.hl7v2.values import Context, Function, Json, Planned, Value


@dataclass(frozen=True)
class Candidate:
    """An order found on the server: its subject reference ("" when none) and its test codes (code values)."""

    subject: str
    codes: frozenset[str]


# Orders found by one key: "ServiceRequest/id" -> what the match needs of it.
Found = dict[str, Candidate]
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class OrderResolver(Protocol):
    def orders_for_barcode(self, barcode: str) -> Found: ...

    def orders_with_identifier(self, token: str) -> Found: ...

    def order(self, order_id: str) -> Found: ...

    def specimen_of(self, order: str, barcodes: tuple[str, ...]) -> tuple[str, dict[str, Any]] | None:
        """The Specimen of ``order`` holding one of ``barcodes`` (identifier or container id): reference, content."""
        ...


@dataclass(frozen=True)
class OrderMatch:
    reference: str
    subject: str | None


@dataclass(frozen=True)
class Key:
    """One way of naming the order: search tokens, and the field they came from (for ERR)."""

    name: str
    values: tuple[str, ...]
    segment: Segment | None
    field: int


def specimen_group(msg: V2Message, obr: Segment) -> list[Segment]:
    """The specimen(s) of an OBR group: the SPM heading it (specimen-centric OUL/OML), else the SPMs that follow
    it up to the next OBR (several senders put SPM after the results, as OML^O21 does)."""
    for seg in reversed(msg.segments[:obr.index]):
        if seg.id == "SPM":
            return [seg]
    out = []
    for seg in msg.segments[obr.index + 1:]:
        if seg.id == "OBR":
            break
        if seg.id == "SPM":
            out.append(seg)
    return out


def containers_of(msg: V2Message, spm: Segment) -> list[Segment]:
    """The SAC segments of a specimen (OUL_R22: SPM, OBX*, {SAC, INV?}*, then its orders)."""
    out = []
    for seg in msg.segments[spm.index + 1:]:
        if seg.id in ("SPM", "OBR", "ORC"):
            break
        if seg.id == "SAC":
            out.append(seg)
    return out


def _order_control(msg: V2Message, obr: Segment) -> Segment | None:
    """The ORC of an OBR: right after it in OUL_R22 (OBR, ORC), else the one just before it (ORC, OBR)."""
    for seg in msg.segments[obr.index + 1:]:
        if seg.id == "ORC":
            return seg
        if seg.id in ("OBR", "SPM", "OBX"):
            break
    for seg in reversed(msg.segments[:obr.index]):
        if seg.id == "ORC":
            return seg
        if seg.id in ("OBR", "SPM", "OBX"):
            break
    return None


def _ei_token(ctx: Context, seg: Segment, seq: int) -> str:
    values = ctx.engine.resolve(f"{seg.id}-{seq}", ctx.at(seg))
    if not values:
        return ""
    ident = ctx.engine.render(ctx.engine.partials["EI"], ctx.at(seg).with_value(values[0])) or {}
    if not ident.get("value"):
        return ""
    value = search_escape(str(ident["value"]))
    return f"{search_escape(str(ident['system']))}|{value}" if ident.get("system") else value


def search_escape(text: str) -> str:
    """A token part as a FHIR search value (backslash, comma, dollar and bar escaped)."""
    return re.sub(r"([\\,$|])", r"\\\1", text)


def _number(ctx: Context, obr: Segment, orc: Segment | None, seq: int, name: str) -> Key:
    """Placer (2) or filler (3) number: OBR's, else ORC's."""
    for seg in (obr, orc):
        if seg is not None and seg.get(seq):
            return Key(name, tuple(t for t in [_ei_token(ctx, seg, seq)] if t), seg, seq)
    return Key(name, (), obr, seq)


def order_keys(ctx: Context, obr: Segment) -> tuple[Key, Key, Key, str | None]:
    """(barcode, placer, filler, our own order id) of an OBR group."""
    msg = ctx.msg
    barcodes: list[str] = []
    where: tuple[Segment | None, int] = (None, 2)
    for spm in specimen_group(msg, obr):
        for comp in (1, 2):
            if spm.get(2, comp=comp):
                barcodes.append(spm.get(2, comp=comp))
                where = where if where[0] is not None else (spm, 2)
        for sac in containers_of(msg, spm):
            if sac.get(3):
                barcodes.append(sac.get(3))
                where = where if where[0] is not None else (sac, 3)
    orc = _order_control(msg, obr)
    placer = _number(ctx, obr, orc, 2, "placer number")
    own = None
    own_app = ctx.variables.get("own_application", "")
    if own_app and placer.segment is not None and placer.segment.get(2, comp=2) == own_app:
        own = placer.segment.get(2) if _ID.fullmatch(placer.segment.get(2)) else None
    barcode = Key("specimen barcode", tuple(dict.fromkeys(barcodes)), where[0], where[1])
    return barcode, placer, _number(ctx, obr, orc, 3, "filler number"), own


def _error(code: str, text: str, key: Key) -> MappingError:
    seg = key.segment
    return MappingError(ErrorDetail(code, text, seg.id if seg else "OBR", seg.occurrence if seg else 1, key.field))


def match_order(resolver: OrderResolver, p: Planned, ctx: Context) -> OrderMatch | None:
    """The order on the server the OBR group ``p`` reports on (see the module docstring); None: not found."""
    barcode, placer, filler, own = order_keys(ctx, p.segment)
    cache: dict[str, Found] = {}

    def lookup(key: Key) -> Found:
        if key.name not in cache:
            found: Found = {}
            for value in key.values:
                if key is barcode:
                    found.update(resolver.orders_for_barcode(value))
                else:
                    found.update(resolver.orders_with_identifier(value))
            if key is placer and own:
                found.update(resolver.order(own))
            cache[key.name] = found
        return cache[key.name]

    keys = [barcode, placer, filler]
    for i, key in enumerate(keys):
        found = lookup(key)
        if not found:
            continue
        chosen = found
        for narrower in keys[i + 1:]:
            if len(chosen) == 1:
                break
            agreeing = {ref: c for ref, c in chosen.items() if ref in lookup(narrower)}
            chosen = agreeing or chosen
        tests = {p.segment.get(4, comp=1), p.segment.get(4, comp=4)} - {""}
        if len(chosen) > 1 and tests:
            chosen = {ref: c for ref, c in chosen.items() if c.codes & tests} or chosen
        if len(chosen) == 1:
            ref, candidate = next(iter(chosen.items()))
            if key is barcode:
                _reuse_specimens(resolver, p, ctx, ref)
            return OrderMatch(ref, candidate.subject or None)
        raise _error(DUPLICATE_KEY_IDENTIFIER, f"{len(chosen)} orders match the {key.name} "
                     f"{', '.join(key.values)} and the other numbers do not tell them apart: "
                     f"{', '.join(sorted(chosen))}", key)
    return None


def _reuse_specimens(resolver: OrderResolver, order: Planned, ctx: Context, order_ref: str) -> None:
    """The tube the order was found by is the order's own Specimen: the results' SPM/SAC are written onto it
    (merged: what the message says wins, the rest is kept), not onto a second Specimen for the same tube."""
    for spm in specimen_group(ctx.msg, order.segment):
        planned = next((q for q in ctx.planned if q.key == "specimen" and q.segment is spm), None)
        if planned is None or planned.existing is not None:
            continue
        codes = [spm.get(2, comp=1), spm.get(2, comp=2), *(sac.get(3) for sac in containers_of(ctx.msg, spm))]
        held = resolver.specimen_of(order_ref, tuple(c for c in codes if c))
        if held is not None and not any(q.existing == held[0] for q in ctx.planned if q.key == "specimen"):
            planned.existing = held[0]
            planned.merge = {k: v for k, v in held[1].items() if k not in ("meta", "text")}


def merged(existing: dict[str, Any], mapped: dict[str, Any]) -> dict[str, Any]:
    """The message's view of a resource the server holds, laid over it: its identifiers added to the existing
    ones (a label the hospital gave, with its system, stays), objects merged one level (the collector kept when
    the message gives the collection time), anything else the message's."""
    out = dict(existing)
    for key, value in mapped.items():
        old = existing.get(key)
        if key == "identifier" and isinstance(old, list) and isinstance(value, list):
            held = {i.get("value") for i in old if isinstance(i, dict)}
            out[key] = [*old, *(i for i in value if i.get("value") not in held)]
        elif isinstance(old, dict) and isinstance(value, dict):
            out[key] = {**old, **value}
        else:
            out[key] = value
    return out


def no_order(p: Planned, ctx: Context) -> MappingError:
    """Results with neither an order on the server nor a patient in the message (PID): nowhere to file them."""
    barcode, placer, _filler, _own = order_keys(ctx, p.segment)
    key = barcode if barcode.values or not placer.values else placer
    return _error(UNKNOWN_KEY_IDENTIFIER, f"No order matches the {key.name} {', '.join(key.values) or '(none)'}, "
                  "and the message names no patient (PID-3)", key)


# -- template functions --------------------------------------------------------------------------------------
def order_subject(_value: Value | None, ctx: Context, _node: dict[str, Any]) -> Json:
    """The patient of the order this segment's group was matched to (results sent without PID)."""
    seg = ctx.seg
    for p in ctx.planned:
        if p.key != "order" or not p.subject:
            continue
        if seg.id == "SPM":
            hit = any(s is seg for s in specimen_group(ctx.msg, p.segment))
        else:
            hit = seg is p.segment or ctx.msg.nearest("OBR", seg) is p.segment
        if hit:
            return {"reference": p.subject}
    return None


def containers(_value: Value | None, ctx: Context, node: dict[str, Any]) -> Json:
    """Specimen.container from the specimen's SAC segments (``template`` rendered at each), with the INV that
    follows a SAC as the container's additive (a Substance planned from that INV)."""
    out = []
    for sac in containers_of(ctx.msg, ctx.seg):
        container = ctx.engine.render(node["template"], ctx.at(sac)) or {}
        following = ctx.msg.segments[sac.index + 1] if sac.index + 1 < len(ctx.msg.segments) else None
        if following is not None and following.id == "INV":
            substance = next((p for p in ctx.planned if p.key == "substance" and p.segment is following), None)
            if substance is not None:
                container = {k: v for k, v in container.items() if k != "additiveCodeableConcept"}
                container["additiveReference"] = {"reference": substance.full_url}
        if container:
            out.append(container)
    return out or None


def _equipment_id(ctx: Context, seg: Segment) -> str:
    return ctx.engine.text("OBX-18" if seg.id == "OBX" else "EQU-1", ctx.at(seg))


def equipment(_value: Value | None, ctx: Context, _node: dict[str, Any]) -> Json:
    """Observation.device: the analyser OBX-18 names, else the equipment of the message's EQU."""
    wanted = ctx.engine.text("OBX-18", ctx) if ctx.seg.id == "OBX" else ""
    devices = [p for p in ctx.planned if p.key == "device"]
    for p in devices:
        if (wanted and _equipment_id(ctx, p.segment) == wanted) or (not wanted and p.segment.id == "EQU"):
            return {"reference": p.full_url}
    return None


def new_equipment(_value: Value | None, ctx: Context, _node: dict[str, Any]) -> Json:
    """OBX-18 naming an analyser neither an EQU nor an earlier OBX of the message names (one Device each)."""
    wanted = ctx.engine.text("OBX-18", ctx)
    earlier = [s for s in ctx.msg.all("OBX") if s.index < ctx.seg.index]
    if not wanted or any(_equipment_id(ctx, s) == wanted for s in (*ctx.msg.all("EQU"), *earlier)):
        return None
    return wanted


LAW_FUNCTIONS: dict[str, Function] = {
    "order_subject": order_subject, "containers": containers, "equipment": equipment,
    "new_equipment": new_equipment,
}
