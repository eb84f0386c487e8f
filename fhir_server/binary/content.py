"""Binary.data in and out of the blob store, and the pointer the stored JSON keeps in its place.

The stored resource has no ``data``; its ``_data`` (the primitive's own element, binary.html, json.html
"primitive types") carries one server extension naming the blob, as HAPI's externalised binaries do::

    "_data": {"extension": [{"url": "urn:fhir-server:extension:binary-blob", "extension": [
        {"url": "key", "valueString": "<sha256>"}, {"url": "size", "valueDecimal": 123},
        {"url": "sha256", "valueString": "<sha256>"}]}]}

(``valueDecimal`` because FHIR R4 integers stop at 2^31 - 1 and blobs may be larger.) Search and history
show this pointer as stored; read and vread in the FHIR JSON form put ``data`` back, streamed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from fhir_server.binary.store import StoredBlob
from fhir_server.errors import INVALID, FhirError

BLOB_EXT = "urn:fhir-server:extension:binary-blob"
DECODE_CHARS = 4 * 64 * 1024  # base64 characters decoded at a time (a multiple of 4)
_SPACE = re.compile(r"\s")


def pointer(resource: dict[str, Any] | None) -> StoredBlob | None:
    """The blob a stored Binary points at, if any."""
    if not resource:
        return None
    element = resource.get("_data")
    if not isinstance(element, dict):
        return None
    for ext in element.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == BLOB_EXT:
            parts = {p.get("url"): p for p in ext.get("extension") or [] if isinstance(p, dict)}
            try:
                return StoredBlob(str(parts["key"]["valueString"]), int(parts["size"]["valueDecimal"]),
                                  str(parts["sha256"]["valueString"]))
            except (KeyError, TypeError, ValueError):
                raise FhirError(400, INVALID, "The binary-blob extension needs key, size and sha256",
                                ("Binary._data.extension",)) from None
    return None


def _other_extensions(resource: dict[str, Any]) -> dict[str, Any]:
    """``_data`` without our pointer (a client may put its own extensions on data)."""
    element = resource.get("_data")
    if not isinstance(element, dict):
        return {}
    out = dict(element)
    kept = [e for e in element.get("extension") or [] if not (isinstance(e, dict) and e.get("url") == BLOB_EXT)]
    if kept:
        out["extension"] = kept
    else:
        out.pop("extension", None)
    return out


def with_pointer(resource: dict[str, Any], blob: StoredBlob) -> dict[str, Any]:
    """A copy with ``data`` replaced by the pointer to ``blob``."""
    element = _other_extensions(resource)
    element["extension"] = [*element.get("extension", []), {"url": BLOB_EXT, "extension": [
        {"url": "key", "valueString": blob.key},
        {"url": "size", "valueDecimal": blob.size},
        {"url": "sha256", "valueString": blob.sha256},
    ]}]
    out = {k: v for k, v in resource.items() if k not in ("data", "_data")}
    out["_data"] = element
    return out


def without_pointer(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as clients see it in the FHIR JSON form (before ``data`` is added back)."""
    out = {k: v for k, v in resource.items() if k != "_data"}
    element = _other_extensions(resource)
    if element:
        out["_data"] = element
    return out


def decode_data(text: Any) -> Iterator[bytes]:
    """Binary.data (base64Binary) decoded a slice at a time; bad base64 -> 400 naming Binary.data."""
    if not isinstance(text, str):
        raise FhirError(400, INVALID, "Binary.data must be a base64 string", ("Binary.data",))
    if _SPACE.search(text):  # the base64Binary regex allows whitespace; the decoder does not
        text = _SPACE.sub("", text)
    if len(text) % 4:
        raise FhirError(400, INVALID, "Binary.data is not valid base64 (length is not a multiple of 4)",
                        ("Binary.data",))
    for start in range(0, len(text), DECODE_CHARS):
        try:
            yield base64.b64decode(text[start:start + DECODE_CHARS], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FhirError(400, INVALID, f"Binary.data is not valid base64: {exc}", ("Binary.data",)) from None


def encoded_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


def json_form(resource: dict[str, Any], *, has_data: bool, pretty: bool) -> tuple[bytes, bytes]:
    """Head and tail of the FHIR JSON form; the base64 of the content goes between them."""
    body = orjson.dumps(without_pointer(resource), option=orjson.OPT_INDENT_2 if pretty else 0)
    if not has_data:
        return body, b""
    head = body.rstrip()[:-1].rstrip()  # drop the closing brace; resourceType keeps the object non-empty
    if pretty:
        return head + b',\n  "data": "', b'"\n}'
    return head + b',"data":"', b'"}'


def base64_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Encode a byte stream as one base64 text, a bounded slice at a time."""
    carry = b""
    for chunk in chunks:
        buf = carry + chunk if carry else chunk
        cut = len(buf) - len(buf) % 3
        if cut:
            yield base64.b64encode(buf[:cut])
        carry = buf[cut:]
    if carry:
        yield base64.b64encode(carry)
