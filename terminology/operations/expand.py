"""ValueSet/$expand (http://hl7.org/fhir/OperationDefinition/ValueSet-expand)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fhir_server.errors import REQUIRED, TOO_COSTLY, FhirError
from fhir_server.rest.request import FhirRequest, FhirResponse
from terminology import store
from terminology.cache import VsKey, cache_of
from terminology.params import OperationInput
from terminology.valueset import Member, members, text_filter

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

DEFINITION = "http://hl7.org/fhir/OperationDefinition/ValueSet-expand"
MAX_UNPAGED = 10_000  # larger expansions must be paged with count


def value_set_for(repo: Repository, inp: OperationInput, resource_id: str | None) -> dict[str, Any]:
    """The instance, else the ``valueSet`` parameter, else the stored one with canonical ``url``."""
    return keyed_value_set(repo, inp, resource_id)[0]


def keyed_value_set(repo: Repository, inp: OperationInput,
                    resource_id: str | None) -> tuple[dict[str, Any], VsKey | None]:
    """``value_set_for`` with the stored ValueSet's cache key (None for one given in the request)."""
    cache = cache_of(repo)
    if resource_id is not None:
        stored = repo.read("ValueSet", resource_id)
        assert stored.content is not None
        return stored.content, cache.value_set_key(repo, stored)
    given = inp.resource("valueSet")
    if given is not None:
        return given, None
    url = inp.string("url")
    if not url:
        raise FhirError(400, REQUIRED, "One of url or valueSet is required", ("url",))
    version = inp.string("valueSetVersion")
    return cache.value_set(repo, url, version, lambda: store.by_url(repo, "ValueSet", url, version))


def expand(req: FhirRequest, repo: Repository, resource_type: str | None, resource_id: str | None) -> FhirResponse:
    inp = OperationInput.of(req)
    vs = value_set_for(repo, inp, resource_id)
    offset = inp.integer("offset") or 0
    count = inp.integer("count")
    text = inp.string("filter")
    designations = inp.boolean("includeDesignations")
    found = members(repo, vs, text=text)
    if inp.boolean("activeOnly"):
        found = [m for m in found if not m.inactive]
    if text:
        found = text_filter(found, text)
    if count is None and len(found) > MAX_UNPAGED:
        raise FhirError(422, TOO_COSTLY, f"The expansion has {len(found)} codes, more than {MAX_UNPAGED}: "
                                         "page it with count and offset", ("count",))
    page = found[offset:] if count is None else found[offset:offset + count]
    used: list[dict[str, Any]] = []
    if text:
        used.append({"name": "filter", "valueString": text})
    if count is not None:
        used.append({"name": "count", "valueInteger": count})
    if offset:
        used.append({"name": "offset", "valueInteger": offset})
    expansion: dict[str, Any] = {
        "identifier": f"urn:uuid:{uuid.uuid4()}",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "total": len(found), "offset": offset}
    if used:
        expansion["parameter"] = used
    if page:
        expansion["contains"] = [_contains(m, designations) for m in page]
    out = {k: v for k, v in vs.items() if k not in ("meta", "text", "compose", "expansion")}
    out["resourceType"] = "ValueSet"
    out["expansion"] = expansion
    return FhirResponse(200, out)


def _contains(m: Member, designations: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"system": m.system}
    if m.abstract:
        out["abstract"] = True
    if m.inactive:
        out["inactive"] = True
    if m.version:
        out["version"] = m.version
    out["code"] = m.code
    if m.display:
        out["display"] = m.display
    if designations and m.designations:
        out["designation"] = list(m.designations)
    return out
