"""FHIR XML (xml.html) to and from the JSON form the server works in, driven by the R4 definitions.

XML puts elements in definition order, primitives in a ``value`` attribute (with their ``id`` and extensions
from JSON's ``_name``), ``Element.id`` and ``Extension.url`` as attributes, the narrative as XHTML in its own
namespace, and nested resources (``contained``, ``Bundle.entry.resource``, ``Parameters``) inside an element
named by their type. Parsing uses defusedxml: no entity expansion, no external entities, no DTD.
Decimals keep their value, not their written precision (``1.50`` reads as 1.5: the store is JSON).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any
from xml.etree.ElementTree import Element, canonicalize
from xml.sax.saxutils import escape, quoteattr

from defusedxml.ElementTree import fromstring

from fhir_server.definitions import resource_types
from fhir_server.formats.structure import Child, children, children_of_type, primitive_types

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
_INTEGERS = frozenset({"integer", "positiveInt", "unsignedInt"})


class XmlError(ValueError):
    """Content that is not FHIR XML (or JSON that XML cannot carry): ``path`` names the element."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


# --- JSON -> XML ------------------------------------------------------------------------------------------

def to_xml(resource: dict[str, Any]) -> bytes:
    rtype = str(resource.get("resourceType", ""))
    if rtype not in resource_types():
        raise XmlError(f"Unknown resourceType {rtype!r}", "resourceType")
    out: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>']
    _resource(out, resource, rtype, root=True)
    return "".join(out).encode("utf-8")


def _resource(out: list[str], resource: dict[str, Any], rtype: str, *, root: bool = False) -> None:
    ns = f' xmlns="{FHIR_NS}"' if root else ""
    out.append(f"<{rtype}{ns}>")
    _members(out, resource, children(rtype), rtype)
    out.append(f"</{rtype}>")


def _attributes(obj: dict[str, Any], kids: dict[str, Child]) -> str:
    return "".join(f" {c.name}={quoteattr(str(obj[c.name]))}" for c in kids.values() if c.attribute and c.name in obj)


def _members(out: list[str], obj: dict[str, Any], kids: dict[str, Child], path: str) -> None:
    known = {"resourceType", *kids, *(f"_{k}" for k in kids)}
    unknown = [k for k in obj if k not in known]
    if unknown:
        raise XmlError(f"{path}.{unknown[0]} is not an element of {path}", f"{path}.{unknown[0]}")
    for child in kids.values():
        if child.attribute or (child.name not in obj and f"_{child.name}" not in obj):
            continue
        values, extras = obj.get(child.name), obj.get(f"_{child.name}")
        items = values if isinstance(values, list) else [values]
        parts = extras if isinstance(extras, list) else [extras] * len(items)
        if len(parts) < len(items):
            parts = [*parts, *[None] * (len(items) - len(parts))]
        for value, extra in zip(items if values is not None else [None] * len(parts), parts, strict=False):
            _element(out, child, value, extra, f"{path}.{child.name}")


def _element(out: list[str], child: Child, value: Any, extra: Any, path: str) -> None:
    name = child.name
    if child.type == "xhtml":
        out.append(_xhtml_checked(value, path))
        return
    if child.type == "Resource":
        if not isinstance(value, dict) or value.get("resourceType") not in resource_types():
            raise XmlError(f"{path} must be a resource with a known resourceType", path)
        out.append(f"<{name}>")
        _resource(out, value, str(value["resourceType"]))
        out.append(f"</{name}>")
        return
    if child.type in primitive_types():
        attrs = "" if value is None else f" value={quoteattr(_primitive_text(value))}"
        ext = extra if isinstance(extra, dict) else {}
        if ext.get("id") is not None:
            attrs = f" id={quoteattr(str(ext['id']))}" + attrs
        if ext.get("extension"):
            out.append(f"<{name}{attrs}>")
            _members(out, {"extension": ext["extension"]}, children("Element"), path)
            out.append(f"</{name}>")
        else:
            out.append(f"<{name}{attrs}/>")
        return
    if not isinstance(value, dict):
        raise XmlError(f"{path} must be an object", path)
    kids = children_of_type(child.type, child.path)
    out.append(f"<{name}{_attributes(value, kids)}>")
    _members(out, value, kids, child.type or child.path)
    out.append(f"</{name}>")


def _primitive_text(value: Any) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


def _xhtml_checked(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise XmlError(f"{path} must be XHTML text", path)
    try:
        fromstring(value)
    except Exception as exc:  # defusedxml and expat errors alike: not well-formed
        raise XmlError(f"{path} is not well-formed XHTML ({type(exc).__name__})", path) from None
    return value


# --- XML -> JSON ------------------------------------------------------------------------------------------

_TAG = re.compile(r"^\{([^}]*)\}(.*)$")


def _split(tag: str) -> tuple[str, str]:
    m = _TAG.match(tag)
    return (m.group(1), m.group(2)) if m else ("", tag)


def from_xml(data: bytes) -> dict[str, Any]:
    try:
        root = fromstring(data, forbid_dtd=True)
    except Exception as exc:  # expat syntax errors, and defusedxml's refusals (DTDs, entities)
        raise XmlError(f"The body is not well-formed XML: {exc}", "") from None
    ns, rtype = _split(root.tag)
    if ns != FHIR_NS or rtype not in resource_types():
        raise XmlError(f"The root element {rtype!r} is not a FHIR resource in {FHIR_NS}", rtype)
    return _read_resource(root, rtype)


def _read_resource(el: Element, rtype: str) -> dict[str, Any]:
    obj: dict[str, Any] = {"resourceType": rtype}
    obj.update(_read_members(el, children(rtype), rtype))
    return obj


def _read_members(el: Element, kids: dict[str, Child], path: str) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for attr, value in el.attrib.items():
        child = kids.get(attr)
        if child is None or not child.attribute:
            if attr == "value" or attr.startswith("{"):
                continue  # a primitive's own value (read by the caller); namespaced attributes are not FHIR's
            raise XmlError(f"Unknown attribute {attr!r} on {path}", f"{path}.{attr}")
        obj[attr] = value
    extras: dict[str, list[Any]] = {}
    for sub in el:
        ns, name = _split(sub.tag)
        child = kids.get(name)
        where = f"{path}.{name}"
        if child is None or child.attribute or (ns != FHIR_NS and not (child.type == "xhtml" and ns == XHTML_NS)):
            raise XmlError(f"{where} is not an element of {path}", where)
        value, extra = _read_element(sub, child, where)
        if child.repeats:
            obj.setdefault(name, []).append(value)
            extras.setdefault(name, []).append(extra)
        else:
            if name in obj or name in extras:
                raise XmlError(f"{where} may appear only once", where)
            if value is not None:
                obj[name] = value
            extras[name] = [extra]
    for name, parts in extras.items():
        if all(p is None for p in parts):
            continue
        obj[f"_{name}"] = parts if kids[name].repeats else parts[0]
        if name in obj and kids[name].repeats and all(v is None for v in obj[name]):
            del obj[name]
    return obj


def _read_element(sub: Element, child: Child, path: str) -> tuple[Any, dict[str, Any] | None]:
    if child.type == "xhtml":
        return _xhtml_text(sub, top=True), None
    if child.type == "Resource":
        inner = [e for e in sub]
        if len(inner) != 1:
            raise XmlError(f"{path} must hold exactly one resource", path)
        ns, rtype = _split(inner[0].tag)
        if ns != FHIR_NS or rtype not in resource_types():
            raise XmlError(f"{path} holds {rtype!r}, not a FHIR resource", path)
        return _read_resource(inner[0], rtype), None
    if child.type in primitive_types():
        raw = sub.get("value")
        value = None if raw is None else _typed(raw, child.type, path)
        extra = _read_members(sub, children("Element"), path) if (len(sub) or "id" in sub.attrib) else None
        if value is None and not extra:
            raise XmlError(f"{path} has neither a value nor extensions", path)
        return value, extra or None
    kids = children_of_type(child.type, child.path)
    return _read_members(sub, kids, child.type or child.path), None


def _typed(raw: str, code: str, path: str) -> Any:
    if code == "boolean":
        if raw not in ("true", "false"):
            raise XmlError(f"{path} must be true or false, not {raw!r}", path)
        return raw == "true"
    if code in _INTEGERS:
        try:
            return int(raw)
        except ValueError:
            raise XmlError(f"{path} must be a whole number, not {raw!r}", path) from None
    if code == "decimal":
        try:
            number = Decimal(raw)
        except InvalidOperation:
            raise XmlError(f"{path} must be a decimal number, not {raw!r}", path) from None
        return int(number) if number == number.to_integral_value() and "." not in raw and "e" not in raw.lower() \
            else float(number)
    return raw


def _xhtml_text(el: Element, *, top: bool = False) -> str:
    """The XHTML subtree as text in the default namespace (FHIR JSON's form of Narrative.div)."""
    _ns, name = _split(el.tag)
    attrs = "".join(f" {_split(k)[1]}={quoteattr(v)}" for k, v in el.attrib.items())
    if top:
        attrs = f' xmlns="{XHTML_NS}"' + attrs
    inner = escape(el.text or "") + "".join(_xhtml_text(c) + escape(c.tail or "") for c in el)
    return f"<{name}{attrs}>{inner}</{name}>" if inner else f"<{name}{attrs}/>"


def equivalent(original: Any, back: Any) -> bool:
    """Equal JSON, narratives compared as XML (C14N): XML keeps no trace of whether ``&quot;`` or ``"`` was
    written, so a round trip may change the one into the other."""
    if isinstance(original, dict) and isinstance(back, dict):
        return original.keys() == back.keys() and all(
            canonicalize(v) == canonicalize(back[k]) if k == "div" and isinstance(v, str) else equivalent(v, back[k])
            for k, v in original.items())
    if isinstance(original, list) and isinstance(back, list):
        return len(original) == len(back) and all(equivalent(a, b) for a, b in zip(original, back, strict=True))
    return bool(original == back)
