"""The text a resource offers to full-text search: its narrative (``_text``) and all of it (``_content``).

Text is folded (accents removed, case folded) and cut into words here, before it is stored or searched, and
stored as those words separated by spaces: every backend (FTS5, PostgreSQL 'simple', Elasticsearch) then
sees the same words, so ``Chloé`` matches ``chloe`` and ``7.2`` is the words ``7`` ``2`` everywhere.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any

TAG = re.compile(r"<[^>]*>")
SPACE = re.compile(r"\s+")
WORD = re.compile(r"[^\W_]+")  # letters and digits; what FTS5's unicode61 tokenizer also calls a token
# Elements whose strings are identifiers of structure, not text anyone searches for.
SKIP_KEYS = {"resourceType", "id", "meta", "url", "reference", "system", "div", "status"}
MAX_CHARS = 100_000  # bounds one document (a long narrative or a big contained resource)


def fold(text: str) -> str:
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def words(text: str) -> list[str]:
    return WORD.findall(fold(text))


def xhtml_text(div: str) -> str:
    """The words of an XHTML narrative ``div``: tags dropped, entities decoded."""
    return SPACE.sub(" ", html.unescape(TAG.sub(" ", div))).strip()


def narrative(resource: dict[str, Any]) -> str:
    text = resource.get("text")
    div = text.get("div") if isinstance(text, dict) else None
    return " ".join(words(xhtml_text(div)))[:MAX_CHARS] if isinstance(div, str) else ""


def _strings(value: Any, key: str, out: list[str]) -> None:
    if isinstance(value, str):
        if key not in SKIP_KEYS:
            out.append(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            if k == "div" and isinstance(v, str):
                out.append(xhtml_text(v))
            elif k not in SKIP_KEYS:
                _strings(v, k, out)
    elif isinstance(value, list):
        for item in value:
            _strings(item, key, out)


def content(resource: dict[str, Any]) -> str:
    """The words of every string value of the resource (narrative included), space separated.

    Folded and cut once over all strings joined by spaces (a space is never part of a word, so these are
    the words of each string in turn): one regex pass instead of one per string, on every write."""
    strings: list[str] = []
    _strings(resource, "", strings)
    return " ".join(words(" ".join(strings)))[:MAX_CHARS]
