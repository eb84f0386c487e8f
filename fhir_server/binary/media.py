"""Which Binary requests carry raw content and which answers the client wants (http.html#binary).

A Binary sent with a FHIR Content-Type is a FHIR resource; with any other type (application/pdf,
image/png, application/xml ...) the body is the content itself. A read answers with the raw content in
its own type unless the client asks for FHIR JSON (Accept or ``_format``).
"""

from __future__ import annotations

FHIR_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "text/json"}
# Plain application/xml and text/xml are kept as raw content (a CDA document, say); FHIR XML is a resource.
FHIR_XML_TYPES = {"application/fhir+xml", "application/xml+fhir"}
FHIR_FORMATS = FHIR_JSON_TYPES | FHIR_XML_TYPES | {"json", "xml"}


def media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


def binary_parts(path: str) -> list[str] | None:
    """The path segments after ``Binary``, or None when the path is not about Binary."""
    parts = [p for p in path.strip("/").split("/") if p]
    return parts[1:] if parts and parts[0] == "Binary" else None


def is_raw_write(method: str, path: str, content_type: str | None) -> bool:
    """POST /Binary or PUT /Binary/{id} whose body is the content, not a FHIR resource."""
    rest = binary_parts(path)
    if rest is None or not ((method == "POST" and not rest) or (method == "PUT" and len(rest) == 1)):
        return False
    media = media_type(content_type)
    return bool(media) and media not in FHIR_JSON_TYPES and media not in FHIR_XML_TYPES


def is_read(method: str, path: str) -> bool:
    """GET/HEAD /Binary/{id} or /Binary/{id}/_history/{vid}: the reads that may answer raw content."""
    rest = binary_parts(path)
    if rest is None or method not in ("GET", "HEAD"):
        return False
    return (len(rest) == 1 and not rest[0].startswith(("_", "$"))) or (len(rest) == 3 and rest[1] == "_history")


def wants_fhir(format_param: str | None, accept: str | None) -> bool:
    """True when the client asked for the Binary resource itself (FHIR JSON or XML) instead of its content."""
    if format_param:
        return media_type(format_param) in FHIR_FORMATS
    if not accept:
        return False
    return any(media_type(r) in FHIR_JSON_TYPES | FHIR_XML_TYPES for r in accept.split(","))


def wants_xml(format_param: str | None, accept: str | None) -> bool:
    """Of a client that asked for the Binary resource: whether in FHIR XML."""
    if format_param:
        return media_type(format_param) in FHIR_XML_TYPES | {"xml"}
    return any(media_type(r) in FHIR_XML_TYPES for r in (accept or "").split(","))
