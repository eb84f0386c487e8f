"""Content negotiation (http.html#mime-type): FHIR JSON (the default) and FHIR XML (formats/xml.py)."""

from __future__ import annotations

from fhir_server.errors import NOT_SUPPORTED, FhirError

JSON_TYPES = {"json", "application/json", "application/fhir+json", "application/json+fhir", "text/json"}
XML_TYPES = {"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir"}
FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
FHIR_XML_TYPES = {"xml", "application/fhir+xml", "application/xml+fhir"}
# Request bodies read as FHIR XML (a raw Binary upload in application/xml stays raw content: binary/media.py).
XML_BODY_TYPES = {"application/fhir+xml", "application/xml+fhir", "application/xml", "text/xml"}


def negotiate(format_param: str | None, accept: str | None, *, raw_content: bool = False) -> str:
    """The media type to answer with, or FhirError 406.

    ``raw_content``: a Binary read, which may answer in the content's own type, so only the FHIR XML types
    ask for the Binary resource in XML (a stored XML document is served as application/xml)."""
    if format_param:
        fmt = format_param.split(";")[0].strip().lower()
        if fmt in JSON_TYPES:
            return FHIR_JSON
        if fmt in XML_TYPES:
            return FHIR_XML
        raise FhirError(406, NOT_SUPPORTED, f"_format={format_param} is not supported; this server speaks "
                                            "FHIR JSON (application/fhir+json) and FHIR XML (application/fhir+xml)")
    if not accept:
        return FHIR_JSON
    ranges = [r.split(";")[0].strip().lower() for r in accept.split(",")]
    for media in ranges:
        if media in JSON_TYPES or media in ("*/*", "application/*", "") or media.endswith("+json"):
            return FHIR_JSON
        if media in (FHIR_XML_TYPES if raw_content else XML_TYPES) or media.endswith("+xml"):
            return FHIR_XML
    # Any other media type (text/html, image/png ...) is left to the interaction (Binary answers in its own).
    return ranges[0]
