"""The narrative's XHTML rules, txt-1 and txt-2 (both written ``htmlChecks()`` in the definitions, a function
FHIRPath leaves to the validator): the element and attribute lists the FHIR validator enforces (R4
Narrative: HTML 4.0 formatting, tables, lists, images, ``<a>`` with name or href, no scripts, forms or event
handlers), and some non-whitespace content.

Parsed with expat directly (no DTD, no entity declarations: FHIR XHTML allows only the XML entities), once
per div value per validation at most.
"""

from __future__ import annotations

from functools import lru_cache
from xml.parsers import expat

XHTML = "http://www.w3.org/1999/xhtml"
_ELEMENTS = frozenset((
    "p", "br", "div", "h1", "h2", "h3", "h4", "h5", "h6", "a", "span", "b", "em", "i", "strong", "small", "big",
    "tt", "dfn", "q", "var", "abbr", "acronym", "cite", "blockquote", "hr", "address", "bdo", "kbd", "sub", "sup",
    "ul", "ol", "li", "dl", "dt", "dd", "pre", "table", "caption", "colgroup", "col", "thead", "tr", "tfoot",
    "tbody", "th", "td", "code", "samp", "img", "map", "area"))
_ATTRIBUTES = frozenset((
    "title", "style", "class", "id", "lang", "dir", "accesskey", "tabindex", "span", "width", "height", "align",
    "valign", "char", "charoff", "abbr", "axis", "headers", "scope", "rowspan", "colspan", "border", "cellpadding",
    "cellspacing", "frame", "rules", "summary", "start", "type", "value", "cite", "href", "name", "src", "alt",
    "longdesc", "usemap", "shape", "coords", "nowrap", "compact"))
_XML_NS = "http://www.w3.org/XML/1998/namespace"


class _Rejected(Exception):
    pass


@lru_cache(maxsize=512)
def check(div: str) -> tuple[str | None, bool]:
    """(what breaks txt-1 or None, whether there is non-whitespace content: text or an image)."""
    parser = expat.ParserCreate(namespace_separator=" ")
    state = {"depth": 0, "content": False}
    problems: list[str] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        ns, _, local = name.rpartition(" ")
        if state["depth"] == 0 and (local != "div" or ns != XHTML):
            problems.append(f"the narrative must be a <div> in the XHTML namespace ({XHTML}), not <{local}>")
        elif ns != XHTML or local not in _ELEMENTS:
            problems.append(f"the element <{local}> is not allowed in a narrative")
        if local == "img":
            state["content"] = True
        for attr in attrs:
            ans, _, aname = attr.rpartition(" ")
            if ans == _XML_NS and aname == "lang":
                continue
            if ans or aname not in _ATTRIBUTES:
                problems.append(f"the attribute {aname!r} of <{local}> is not allowed in a narrative")
        if local == "a" and not ({"href", "name"} & set(attrs)):
            problems.append("an <a> element needs an href or a name")
        state["depth"] += 1
        if problems:
            raise _Rejected

    def end(name: str) -> None:
        state["depth"] -= 1

    def text(data: str) -> None:
        if data.strip():
            state["content"] = True

    def forbidden(*_: object) -> None:
        problems.append("a narrative may not declare a DTD or entities")
        raise _Rejected

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = forbidden
    parser.EntityDeclHandler = forbidden
    try:
        parser.Parse(div, True)
    except _Rejected:
        pass
    except expat.ExpatError as exc:
        problems.append(
            f"the narrative is not well-formed XHTML ({expat.ErrorString(exc.code)}, "
            f"line {exc.lineno} column {exc.offset})"
        )
    return (problems[0] if problems else None), bool(state["content"])


def failure(key: str, div: object) -> str | None:
    """Why ``div`` breaks the invariant ``key`` (txt-1 or txt-2), or None when it holds."""
    if not isinstance(div, str):
        return None  # the structure check reports a div that is not a string
    problem, content = check(div)
    if key == "txt-1":
        return problem
    return None if content or problem else "the narrative has no non-whitespace content"


KEYS = frozenset({"txt-1", "txt-2"})
