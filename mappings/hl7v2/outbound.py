"""FHIR -> HL7 v2 for orders out: a JSON segment template whose fields are FHIRPath expressions.

``outbound/ORM_O01.json`` lists segments; each field is an expression (a FHIRPath on the context variables
%patient, %order, %control, %now, %placer, %authority, or relative to the repeated item), or an object with
``components`` (a list of such), ``repeat`` (one repetition per item), ``value`` + ``map`` (a code map from
codemaps/, reversed direction maps live there too). ``each`` on a segment repeats it per item (NTE per note).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fhirpathpy

from mappings.hl7v2.message import Encoding, escape

ROOT = Path(__file__).parent
_FHIR_DATETIME = re.compile(
    r"(\d{4}(?:-\d{2}(?:-\d{2})?)?)(?:T(\d{2}:\d{2}(?::\d{2})?)(?:\.\d+)?(Z|[+-]\d{2}:\d{2})?)?")
Node = str | dict[str, Any]


class OutboundMapper:
    def __init__(self, root: Path = ROOT) -> None:
        self.templates = {p.stem: json.loads(p.read_text("utf-8")) for p in (root / "outbound").glob("*.json")}
        self.codemaps = {p.stem: json.loads(p.read_text("utf-8")) for p in (root / "codemaps").glob("*.json")}
        self.enc = Encoding()

    def render(self, structure: str, context: dict[str, Any], *, sending: tuple[str, str],
               receiving: tuple[str, str], control_id: str, processing_id: str = "P") -> str:
        template = self.templates[structure]
        msg_type, trigger = template["event"].split("^")
        f, c = self.enc.field, self.enc.component
        now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
        variables = {**context, "now": now}
        msh = f.join(["MSH", self.enc.msh2, escape(sending[0], self.enc), escape(sending[1], self.enc),
                      escape(receiving[0], self.enc), escape(receiving[1], self.enc), now, "",
                      f"{msg_type}{c}{trigger}{c}{template['structure']}", control_id, processing_id,
                      template["version"]])
        segments = [msh]
        for spec in template["segments"]:
            items = fhirpathpy.evaluate({}, spec["each"], variables) if "each" in spec else [None]
            for index, item in enumerate(items, start=1):
                segments.append(self._segment(spec, item, {**variables, "index": str(index)}))
        return "\r".join(segments) + "\r"

    def _segment(self, spec: dict[str, Any], item: Any, variables: dict[str, Any]) -> str:
        fields: dict[int, str] = {}
        for position, node in spec["fields"].items():
            value = self._field(node, item, variables)
            if value:
                fields[int(position)] = value
        last = max(fields, default=0)
        return self.enc.field.join([spec["id"], *(fields.get(i, "") for i in range(1, last + 1))])

    def _field(self, node: Node, item: Any, variables: dict[str, Any]) -> str:
        if isinstance(node, dict) and "repeat" in node:
            reps = fhirpathpy.evaluate(item if item is not None else {}, node["repeat"], variables)
            inner = {k: v for k, v in node.items() if k != "repeat"}
            return self.enc.repetition.join(self._field(inner, rep, variables) for rep in reps)
        if isinstance(node, dict) and "components" in node:
            parts = [self._value(part, item, variables) for part in node["components"]]
            return self.enc.component.join(parts).rstrip(self.enc.component)
        return self._value(node, item, variables)

    def _value(self, node: Node, item: Any, variables: dict[str, Any]) -> str:
        if isinstance(node, dict):
            text = self._value(node["value"], item, variables)
            table = self.codemaps[node["map"]]
            if node.get("reverse"):  # e.g. Identifier.system -> assigning authority
                found = {v: k.split("^")[0] for k, v in table["map"].items()}.get(text)
                base = table.get("base", "")
                return found or (text[len(base):] if base and text.startswith(base) else text)
            return str(table["map"].get(text, ""))
        if not node:
            return ""
        result = fhirpathpy.evaluate(item if item is not None else {}, node, variables)
        if not result:
            return ""
        value = result[0]
        if isinstance(value, bool):
            value = "Y" if value else "N"
        text = str(value)
        m = _FHIR_DATETIME.fullmatch(text)
        if m:  # FHIR date/dateTime -> v2 DTM, keeping the offset
            date, time, zone = m.group(1).replace("-", ""), (m.group(2) or "").replace(":", ""), m.group(3)
            text = date + time + ("+0000" if zone == "Z" else (zone or "").replace(":", ""))
        return escape(text, self.enc)
