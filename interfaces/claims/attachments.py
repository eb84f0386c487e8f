"""Attachments that point at a Binary stored here travel embedded: the payer cannot fetch our ``Binary/[id]``.

``DocumentReference.content.attachment``, ``Communication.payload.contentAttachment`` and
``Claim.supportingInfo.valueAttachment`` with ``url = Binary/[id]`` (relative: ours) get ``data`` (base64 of the
stored bytes), ``contentType`` and ``size`` instead of the url. The Binary is read with the caller's access
(refused: nothing is sent), and one whose ``securityContext`` belongs to another patient is refused (422) like
any other record of another person. An absolute url is left as it is.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

from fhir_server.auth.compartment import patients_of
from fhir_server.binary.content import pointer
from fhir_server.binary.store import BlobStore
from fhir_server.errors import PROCESSING, TOO_COSTLY, FhirError
from fhir_server.storage.repository import Repository

MAX_EMBEDDED = 20 * 1024 * 1024  # bytes of one attachment sent inline
_BINARY = re.compile(r"^Binary/([A-Za-z0-9\-.]{1,64})$")


def _attachments(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    rtype = resource.get("resourceType")
    if rtype == "DocumentReference":
        for content in resource.get("content") or []:
            if isinstance(content.get("attachment"), dict):
                yield "DocumentReference.content.attachment", content["attachment"]
    elif rtype == "Communication":
        for payload in resource.get("payload") or []:
            if isinstance(payload.get("contentAttachment"), dict):
                yield "Communication.payload.contentAttachment", payload["contentAttachment"]
    elif rtype == "Claim":
        for info in resource.get("supportingInfo") or []:
            if isinstance(info.get("valueAttachment"), dict):
                yield "Claim.supportingInfo.valueAttachment", info["valueAttachment"]


def embed(repo: Repository, store: BlobStore, resource: dict[str, Any], patient_id: str) -> dict[str, Any]:
    """``resource`` (a copy, when anything changed) with its stored Binaries embedded."""
    found = [(element, att) for element, att in _attachments(resource)
             if isinstance(att.get("url"), str) and _BINARY.match(att["url"]) and not att.get("data")]
    if not found:
        return resource
    out: dict[str, Any] = _copy(resource)
    for element, att in _attachments(out):
        match = _BINARY.match(str(att.get("url") or ""))
        if match is None or att.get("data"):
            continue
        binary = repo.read("Binary", match.group(1)).content or {}  # the caller's access: refused -> not sent
        context = str((binary.get("securityContext") or {}).get("reference") or "")
        if context.count("/") == 1:
            owner_type, owner_id = context.split("/")
            owners = {owner_id} if owner_type == "Patient" else \
                patients_of(owner_type, repo.read(owner_type, owner_id).content or {})
            if owners - {patient_id}:
                raise FhirError(422, PROCESSING, f"{element} points at {att['url']}, which belongs to another "
                                                 "patient; nothing was sent", (element,))
        blob = pointer(binary)
        data = b"".join(store.open(blob.key)) if blob is not None else base64.b64decode(binary.get("data") or "")
        if len(data) > MAX_EMBEDDED:
            raise FhirError(422, TOO_COSTLY, f"{att['url']} is too large to send inline", (element,))
        att.pop("url")
        att["data"] = base64.b64encode(data).decode("ascii")
        att["size"] = len(data)
        att.setdefault("contentType", binary.get("contentType") or "application/octet-stream")
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
