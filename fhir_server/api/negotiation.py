"""Content negotiation (http.html#mime-type): FHIR JSON only; XML asked for gets 406."""

from __future__ import annotations

from fhir_server.errors import NOT_SUPPORTED, FhirError

JSON_TYPES = {"json", "application/json", "application/fhir+json", "application/json+fhir", "text/json"}
XML_TYPES = {"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir"}
FHIR_JSON = "application/fhir+json"


FHIR_XML_TYPES = {"xml", "application/fhir+xml", "application/xml+fhir"}


def negotiate(format_param: str | None, accept: str | None, *, raw_content: bool = False) -> str:
    """The media type to answer with, or FhirError 406.

    ``raw_content``: a Binary read, which may answer in the content's own type, so only FHIR XML is refused
    (a stored XML document is served as application/xml)."""
    if format_param:
        fmt = format_param.split(";")[0].strip().lower()
        if fmt in JSON_TYPES:
            return FHIR_JSON
        raise FhirError(406, NOT_SUPPORTED, f"_format={format_param} is not supported; this server speaks "
                                            "FHIR JSON (application/fhir+json)")
    if not accept:
        return FHIR_JSON
    ranges = [r.split(";")[0].strip().lower() for r in accept.split(",")]
    for media in ranges:
        if media in JSON_TYPES or media in ("*/*", "application/*", "") or media.endswith("+json"):
            return FHIR_JSON
    if any(m in (FHIR_XML_TYPES if raw_content else XML_TYPES) for m in ranges):
        raise FhirError(406, NOT_SUPPORTED, "FHIR XML is not supported; ask for application/fhir+json")
    # Any other media type (text/html, image/png ...) is left to the interaction (Binary answers in its own).
    return ranges[0]
