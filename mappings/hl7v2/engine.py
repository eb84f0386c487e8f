"""A small template engine: JSON templates shaped like the FHIR output, with directives that read the message.

Template language (kept deliberately small; see mappings/hl7v2/README.md):
- a string starting with ``$`` is a path: ``$PID-5.1.1`` (segment-field.component.subcomponent; a segment
  other than the current one is its nearest group parent, e.g. OBR for an OBX), ``$.4.2`` (relative to the
  datatype value a partial is rendering), ``$@name`` (a variable: sender, control_id, event, ...);
- ``{"$": path, "each": true, "as": T, "map": M, "fn": F}``: read a path (all repetitions with ``each``), then
  render it with a datatype partial or convert it to a primitive (``as``), look it up in a JSON code map
  (``map``) or hand it to a named function (``fn``);
- ``{"$when": {"$": path, "in": [...]} | {"$": path, "present": true}, ...}``: the node only if the test holds
  (``present``: the first component has text; ``valued``: any component of any repetition has; ``all`` /
  ``any``: a list of tests that must all / at least one hold);
- ``{"$first": [node, ...]}``: the first non-empty; ``{"$literal": x}``: x as is;
- ``{"$ref": key}`` / ``{"$refs": key}``: Reference(s) to resources produced by another rule (nearest / all in
  this group); ``{"$segments": "NK1", "template": {...}}``: render a template once per such segment
  (``following``: only the segments right after the current one, e.g. NTE after OBX, or ``"group"`` as
  below; ``joined``: as one text);
- ``{"$fn": name}``: a named function of the current datatype value (see functions.py);
- on a ``map`` directive, ``strict``: a code the map does not hold is an error at that path, 102 when the map
  lists it under ``refused`` (with the reason), else 103 (not a ``what`` of the map's ``table``);
- ``"$checks": [node, ...]`` at the top of a resource template: rendered first, only for their errors;
- on any directive: ``required`` (empty -> AE 101 at that path, only where its ``$when`` holds; ``because``
  says why in the error text), ``default`` (used when empty), ``with``
  (constant members merged into the result, e.g. an identifier type), ``following`` (read the field from
  the segments right after the current one, e.g. RXR after RXA; ``"group"``: any later segment before the
  next ORC/PID/MFE or the next segment like the current one, e.g. RXR after RXE and its TQ1s).
Empty values are pruned, and an object left with only constants is dropped (a coding system without a code).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from mappings.hl7v2 import convert
from mappings.hl7v2.errors import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    ErrorDetail,
    MappingError,
)
from mappings.hl7v2.message import Segment, V2Message
from mappings.hl7v2.values import Context, Function, Json, Planned, Value


def _empty(value: Json) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _static(node: Json) -> bool:
    if isinstance(node, str):
        return not node.startswith("$")
    if isinstance(node, dict):
        return not any(k.startswith("$") for k in node) and all(_static(v) for v in node.values())
    if isinstance(node, list):
        return all(_static(v) for v in node)
    return True


@functools.lru_cache(maxsize=4096)
def _parse_path(path: str) -> tuple[str, int, tuple[int, ...]]:
    """``PID-5.1.1`` -> ("PID", 5, (1, 1)); ``.4.2`` (relative) -> ("", 0, (4, 2)). Templates are fixed data:
    each path is parsed once, not on every message."""
    if path.startswith("."):
        return "", 0, tuple(int(p) for p in path[1:].split("."))
    seg_id, _, rest = path.partition("-")
    seq_text, *subpath = rest.split(".")
    return seg_id, int(seq_text), tuple(int(p) for p in subpath)


class Engine:
    def __init__(self, partials: dict[str, Json], codemaps: dict[str, dict[str, Any]],
                 functions: dict[str, Function], default_tz: str = "+00:00") -> None:
        self.partials = partials
        self.codemaps = codemaps
        self.functions = functions
        self.default_tz = default_tz

    # -- paths ---------------------------------------------------------------------------------------
    def resolve(self, path: str, ctx: Context, following: bool | str = False) -> list[Value]:
        """All values at ``path`` (one per repetition of the field)."""
        seg_id, seq, subpath = _parse_path(path)
        if not seg_id:
            if ctx.value is None:
                return []
            value: Value | None = ctx.value
            for part in subpath:
                value = value.child(part) if value else None
            return [value] if value else []
        segments = self._segments(seg_id, ctx, following)
        out: list[Value] = []
        for seg in segments:
            for rep in seg.repetitions(seq):
                value = Value(rep, 0, seg, seq)
                for part in subpath:
                    value = value.child(part) if value else None
                if value is not None and value.raw:
                    out.append(value)
        return out

    def _segments(self, seg_id: str, ctx: Context, following: bool | str) -> list[Segment]:
        if following == "group":  # any later segment of the current one's group (RXR after RXE and its TQ1s)
            return [seg for seg in _rest_of_group(ctx.msg, ctx.seg) if seg.id == seg_id]
        if following:  # the segments right after the current one (NTE after OBX)
            out = []
            for seg in ctx.msg.segments[ctx.seg.index + 1:]:
                if seg.id != seg_id:
                    break
                out.append(seg)
            return out
        if seg_id == ctx.seg.id:
            return [ctx.seg]
        nearest = ctx.msg.nearest(seg_id, ctx.seg)
        return [nearest] if nearest else []

    def text(self, path: str, ctx: Context) -> str:
        values = self.resolve(path, ctx)
        return values[0].text() if values else ""

    # -- evaluation ----------------------------------------------------------------------------------
    def render(self, node: Json, ctx: Context) -> Json:
        if isinstance(node, str):
            if not node.startswith("$"):
                return node
            if node.startswith("$@"):
                return ctx.variables.get(node[2:]) or None
            return self.text(node[1:], ctx) or None
        if isinstance(node, list):
            out: list[Json] = []
            for item in node:
                result = self.render(item, ctx)
                if isinstance(result, list):
                    out.extend(r for r in result if not _empty(r))
                elif not _empty(result):
                    out.append(result)
            return out or None
        if isinstance(node, dict):
            return self._render_object(node, ctx)
        return node

    def _render_object(self, node: dict[str, Any], ctx: Context) -> Json:
        if "$when" in node and node.get("required") and not self._test(node["$when"], ctx):
            return None  # required only where its condition holds
        result = self._render_node(node, ctx)
        if _empty(result):
            if node.get("required"):
                raise self._missing(node, ctx)
            return node.get("default")
        if "with" in node and isinstance(result, dict):
            return {**result, **node["with"]}
        return result

    def _render_node(self, node: dict[str, Any], ctx: Context) -> Json:
        if "$in" in node:  # internal ($segments): the rest, its $when included, at another segment
            seg = ctx.msg.segments[node["$in"]]
            return self._render_object({k: v for k, v in node.items() if k != "$in"}, ctx.at(seg))
        if "$when" in node:
            if not self._test(node["$when"], ctx):
                return None
            node = {k: v for k, v in node.items() if k not in ("$when", "default")}
        if "$literal" in node:
            return node["$literal"]
        if "$first" in node:
            for option in node["$first"]:
                result = self.render(option, ctx)
                if not _empty(result):
                    return result
            return None
        if "$ref" in node:
            target = self._nearest_planned(node["$ref"], ctx)
            return {"reference": target.full_url} if target else None
        if "$refs" in node:
            return [{"reference": p.full_url} for p in self._group_planned(node["$refs"], ctx)] or None
        if "$segments" in node:
            segs = (self._segments(node["$segments"], ctx, node["following"]) if node.get("following")
                    else ctx.msg.all(node["$segments"]))
            rendered = self.render([{"$in": s.index, **node["template"]} for s in segs], ctx) if segs else None
            if node.get("joined") and rendered:
                return "\n".join(rendered)
            return rendered
        if "$fn" in node:
            return self.functions[node["$fn"]](ctx.value, ctx, node)
        if "$" in node:
            return self._directive(node, ctx)
        obj: dict[str, Any] = {}
        dynamic = False
        for key, sub in node.items():
            value = self.render(sub, ctx)
            if _empty(value):
                continue
            obj[key] = value
            dynamic = dynamic or not _static(sub)
        return obj if dynamic else None

    def _missing(self, node: dict[str, Any], ctx: Context) -> MappingError:
        path = str(node.get("$", ""))
        seg_id, _, rest = path.partition("-")
        segs = self._segments(seg_id, ctx, False) if rest else []
        seg = segs[0] if segs else ctx.seg
        numbers = [int(p) for p in rest.split(".") if p.isdigit()]
        because = f" {node['because']}" if node.get("because") else ""
        return MappingError(ErrorDetail(REQUIRED_FIELD_MISSING, f"{path or 'a value'} is required{because}",
                                        seg_id or seg.id, seg.occurrence if segs else 1,
                                        numbers[0] if numbers else 0, numbers[1] if len(numbers) > 1 else 0))

    def _directive(self, node: dict[str, Any], ctx: Context) -> Json:
        values = self.resolve(node["$"], ctx, node.get("following") or False)
        if not node.get("each"):
            values = values[:1]
        results = [r for r in (self._apply(node, v, ctx) for v in values) if not _empty(r)]
        if node.get("each"):
            return results or None
        return results[0] if results else None

    def _apply(self, node: dict[str, Any], value: Value, ctx: Context) -> Json:
        if "fn" in node:
            return self.functions[node["fn"]](value, ctx, node)
        if "as" in node:
            kind = node["as"]
            converter = _CONVERTERS.get(kind)
            if converter is not None:
                text = value.text(formatted=kind == "text")
                if not text:
                    return None
                try:
                    return converter(self, text)
                except convert.ConversionError as exc:
                    raise value.error(DATA_TYPE_ERROR, str(exc)) from exc
            return self.render(self.partials[kind], ctx.with_value(value))
        if "map" in node:
            code = value.text()
            found = self.lookup(node["map"], code)
            if found is None and code and node.get("strict"):
                raise self._not_mapped(node["map"], code, value)
            return found
        return value.text() or None

    def _not_mapped(self, name: str, code: str, value: Value) -> MappingError:
        table = self.codemaps[name]
        what = table.get("what", f"code of {name}")
        refused = table.get("refused", {})
        reason = refused.get(code) or refused.get(code.upper())
        if reason:
            return value.error(DATA_TYPE_ERROR, f"{what} {code!r} is refused ({reason})")
        where = f" ({table['table']})" if "table" in table else ""
        return value.error(TABLE_VALUE_NOT_FOUND, f"{code!r} is not a {what}{where}")

    def lookup(self, name: str, code: str) -> Json:
        table = self.codemaps[name]
        mapping = table["map"]
        if code in mapping:
            return mapping[code]
        if code.upper() in mapping:
            return mapping[code.upper()]
        return table.get("default") if code or table.get("defaultWhenEmpty") else None

    def _test(self, test: dict[str, Any], ctx: Context) -> bool:
        if "event" in test:
            return ctx.variables.get("event") in test["event"]
        if "all" in test:
            return all(self._test(t, ctx) for t in test["all"])
        if "any" in test:
            return any(self._test(t, ctx) for t in test["any"])
        if "fn" in test:
            return _empty(self.functions[test["fn"]](ctx.value, ctx, test)) != bool(test.get("present", True))
        text = self.text(test["$"], ctx).upper() if "$" in test else ""
        if "in" in test:
            return text in test["in"]
        if "not_in" in test:
            return text not in test["not_in"]
        if "present" in test:
            return bool(text) == bool(test["present"])
        if "valued" in test:  # any component of any repetition has content (OBX-5 "^182" is valued)
            valued = any(_has_content(v) for v in self.resolve(test["$"], ctx))
            return valued == bool(test["valued"])
        raise ValueError(f"unknown $when test {test}")

    # -- references between planned resources ---------------------------------------------------------
    def _nearest_planned(self, key: str, ctx: Context) -> Planned | None:
        candidates = [p for p in ctx.planned if p.key == key]
        # Resources planned per group (a specimen per OBR) only serve their own group.
        candidates = [p for p in candidates
                      if p.anchor is None or ctx.msg.nearest(p.anchor.id, ctx.seg) is p.anchor]
        before = [p for p in candidates if p.segment.index <= ctx.seg.index]
        if before:
            return before[-1]
        return candidates[0] if candidates else None

    def _group_planned(self, key: str, ctx: Context) -> list[Planned]:
        """Resources of ``key`` whose group parent (nearest segment of the current id) is the current one."""
        return [p for p in ctx.planned
                if p.key == key and (ctx.msg.nearest(ctx.seg.id, p.segment) is ctx.seg if not p.rule.get("leads")
                                     # a segment heading its group (SPM before its OBRs in OUL^R22/OML^O33)
                                     else p.segment.index < ctx.seg.index
                                     and ctx.msg.nearest(p.segment.id, ctx.seg) is p.segment)]


# Segments that start a new group: what follows one of them belongs to another order or patient.
_GROUP_STARTS = frozenset({"MSH", "PID", "ORC", "MFE"})


def _rest_of_group(msg: V2Message, current: Segment) -> list[Segment]:
    out = []
    for seg in msg.segments[current.index + 1:]:
        if seg.id in _GROUP_STARTS or seg.id == current.id:
            break
        out.append(seg)
    return out


def _has_content(value: Value) -> bool:
    enc = value.segment.enc
    rest = value.raw.replace('""', "")
    for delimiter in (enc.component, enc.subcomponent, enc.repetition):
        rest = rest.replace(delimiter, "")
    return bool(rest.strip())


_CONVERTERS: dict[str, Callable[[Engine, str], Json]] = {
    "date": lambda _e, t: convert.to_date(t),
    "dateTime": lambda e, t: convert.to_datetime(t, e.default_tz),
    "instant": lambda e, t: convert.to_instant(t, e.default_tz),
    "time": lambda _e, t: convert.to_time(t),
    "decimal": lambda _e, t: convert.to_decimal(t),
    "integer": lambda _e, t: convert.to_integer(t),
    "boolean": lambda _e, t: convert.to_boolean(t),
    "string": lambda _e, t: t,
    "text": lambda _e, t: t,
    "code": lambda _e, t: t.strip(),
}
