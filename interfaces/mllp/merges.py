"""HL7 v2 patient merges (ADT^A34/A39/A40/A47) under the front desk's merge rules (issue 17, FHIR_WORKFLOWS
includes ``frontdesk``): the same merge as ``Patient/$merge``, run in the message's own transaction.

Without the front desk, the mapping writes the prior patient (MRG-1) as an inactive Patient linked
``replaced-by`` the surviving one (the v2-to-FHIR IG's MRG[Patient] sheet), and nothing else moves. With it, the
prior patient is found by its MRG-1 identifiers and merged the front desk's way: its content is kept, it
gets ``replaced-by`` and ``active=false``, every resource referring to it (encounters, results, allergies...)
moves to the surviving patient, and a Provenance (activity merge, the message as its source entity) records
the versions before, so ``Patient/$unmerge`` can undo it. The rules hold as for ``$merge``: a prior patient
already merged into another one, or a surviving patient that is inactive or merged, fails the message (AE);
a prior patient already merged into this one (the message re-sent) is left as it is, and a prior patient
the server never knew leaves nothing to merge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_server.errors import PROCESSING, FhirError
from fhir_server.rest import interactions as ix
from fhir_server.rest.request import FhirResponse
from fhir_server.storage.repository import Repository, Version
from fhir_server.workflows import enabled_areas
from fhir_server.workflows.frontdesk.merge import Merge, merge_patients
from fhir_server.workflows.frontdesk.registration import merged
from mappings.hl7v2.header import Header
from mappings.hl7v2.mapper import MESSAGE_SYSTEM

MERGE_EVENTS = frozenset({"ADT^A34", "ADT^A39", "ADT^A40", "ADT^A47"})

AfterWrite = Callable[[Repository, Sequence[FhirResponse | None]], None]


@dataclass
class _Pair:
    target_url: str  # fullUrl of the surviving Patient's entry
    prior_criteria: str  # the MRG-1 identifier search that finds the prior patient


def frontdesk_on(workflows: str) -> bool:
    return "frontdesk" in enabled_areas(workflows)


Sources = list[tuple[str, int]]


def plan_merge(header: Header, bundle: dict[str, Any], sources: Sources
               ) -> tuple[dict[str, Any], Sources, AfterWrite | None]:
    """For a merge event: the bundle (and the segment each entry came from) without the prior patient's
    entry, which the merge writes, and the step that merges inside the message's transaction. Other events:
    the bundle as it is, no step."""
    if header.event not in MERGE_EVENTS:
        return bundle, sources, None
    entries = bundle["entry"]
    priors = [e for e in entries if e["resource"].get("resourceType") == "Patient"
              and e["request"]["method"] == "PUT" and "?" in e["request"]["url"]
              and any(lk.get("type") == "replaced-by" for lk in e["resource"].get("link") or [])]
    if not priors:
        return bundle, sources, None
    prior = priors[0]
    target_url = next((lk["other"]["reference"] for lk in prior["resource"]["link"]
                       if lk.get("type") == "replaced-by"), "")
    kept = []
    for e in entries:
        if e is prior:
            continue
        resource = e["resource"]
        if e["fullUrl"] == target_url:  # its "replaces" link is the merge's to write, to the stored prior
            links = [lk for lk in resource.get("link") or []
                     if lk.get("other", {}).get("reference") != prior["fullUrl"]]
            resource = {k: v for k, v in resource.items() if k != "link"} | ({"link": links} if links else {})
        if resource.get("resourceType") == "Provenance":
            resource = {**resource, "target": [t for t in resource["target"] if t["reference"] != prior["fullUrl"]]}
        kept.append({**e, "resource": resource})
    pair = _Pair(target_url, prior["request"]["url"].partition("?")[2])
    source_entity = {"role": "source", "what": {"identifier": {"system": MESSAGE_SYSTEM,
                                                               "value": f"{header.sender}|{header.control_id}"}}}

    def merge(repo: Repository, responses: Sequence[FhirResponse | None]) -> None:
        _merge(repo, pair, [e["fullUrl"] for e in kept], responses, source_entity)

    dropped = entries.index(prior)
    return {**bundle, "entry": kept}, [s for i, s in enumerate(sources) if i != dropped], merge


def _merge(repo: Repository, pair: _Pair, full_urls: list[str], responses: Sequence[FhirResponse | None],
           source_entity: dict[str, Any]) -> None:
    index = full_urls.index(pair.target_url)
    response = responses[index]
    location = response.headers.get("Location", "") if response is not None else ""
    parts = location.split("/")
    if "_history" not in parts:
        raise FhirError(500, PROCESSING, "The surviving patient of the merge was not written")
    target_id = parts[parts.index("_history") - 1]
    found = repo.find_ids("Patient", ix.criteria_params(pair.prior_criteria), limit=2)
    if len(found) > 1:
        raise FhirError(409, PROCESSING, f"MRG-1 identifies {len(found)} patients; a merge needs exactly one",
                        ("Patient",))
    target = _keeping_links(repo, target_id)
    if not found or found[0] == target_id:
        return  # a prior patient the server never had (nothing to merge), or the one that stays
    source = repo.current("Patient", found[0], for_update=True)
    assert source is not None
    links = (source.content or {}).get("link") or []
    if merged(source.content or {}) and any(lk.get("type") == "replaced-by"
                                            and lk.get("other", {}).get("reference") == f"Patient/{target_id}"
                                            for lk in links):
        return  # already merged into this patient: the message was re-sent
    Merge.check(source, target)  # the target's links and active as before the message (_keeping_links)
    merge_patients(repo, "", source, target, None, Merge.referrers(repo, source.id, target_id), [source_entity])


def _before_message(repo: Repository, now: Version) -> Version | None:
    """The surviving patient as it was before this message wrote it (None: the message created it)."""
    return repo.vread("Patient", now.id, now.version_id - 1) if now.version_id > 1 else None


def _keeping_links(repo: Repository, target_id: str) -> Version:
    """The surviving patient after the message's update, with the links it had before put back (the
    message's PID rewrites the demographics; an earlier merge's ``replaces`` and a ``replaced-by`` stay, so a
    patient merged away is still seen as merged by the rules)."""
    now = repo.current("Patient", target_id, for_update=True)
    assert now is not None
    before = _before_message(repo, now)
    kept = ((before.content or {}).get("link") or []) if before is not None else []
    current = (now.content or {}).get("link") or []
    missing = [lk for lk in kept if lk not in current]
    if not missing:
        return now
    content = {**(now.content or {}), "link": [*current, *missing]}
    if before is not None and merged(before.content or {}):
        content["active"] = (before.content or {}).get("active", False)
    after, _ = repo.update("Patient", target_id, content)
    return after
