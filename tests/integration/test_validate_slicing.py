"""Slicing by what a reference resolves to (``resolve()`` with profile and type discriminators) through
$validate of document Bundles, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.integration import validate_profiles as tp
from tests.integration.test_validate_operation import errors, put, validate

NARRATIVE = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}


def document(*entries: str, extra: tuple[tuple[str, dict[str, Any]], ...] = ()) -> dict[str, Any]:
    composition = {"resourceType": "Composition", "meta": {"profile": [tp.DOCUMENT]}, "status": "final",
                   "type": {"text": "note"}, "date": "2024-05-01", "author": [{"display": "Dr A"}], "title": "Note",
                   "text": NARRATIVE, "section": [{"title": "s", "text": NARRATIVE,
                                                   "entry": [{"reference": e} for e in entries]}]}
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "BP"}}
    resources = [("urn:uuid:c", composition), ("urn:uuid:p", copy.deepcopy(tp.good_patient())),
                 ("urn:uuid:o1", observation), ("urn:uuid:o2", observation), *extra]
    return {"resourceType": "Bundle", "type": "document", "identifier": {"system": "urn:ietf:rfc:3986",
                                                                          "value": "urn:uuid:d"},
            "timestamp": "2024-05-01T10:00:00Z", "entry": [{"fullUrl": u, "resource": r} for u, r in resources]}


@pytest.mark.parametrize("kind", ["profile", "type"])
def test_section_entries_sliced_by_their_targets(api, kind: str) -> None:  # type: ignore[no-untyped-def]
    for res in [*tp.terminology(), tp.patient_profile(), tp.document_profile(kind)]:
        put(api, res)
    assert errors(validate(api, document("urn:uuid:o1", "urn:uuid:p", "urn:uuid:o2"))) == {}
    # no patient: the slice's minimum; a Practitioner: no slice (closed)
    practitioner = ("urn:uuid:x", {"resourceType": "Practitioner", "name": [{"family": "A"}]})
    found = errors(validate(api, document("urn:uuid:o1", "urn:uuid:x", extra=(practitioner,))))
    assert "the slice 'patient' of Composition.section.entry needs at least 1" in \
        found["Bundle.entry[0].resource.section[0].entry"]
    assert "matches no slice" in found["Bundle.entry[0].resource.section[0].entry[1]"]
    # two patients: the slice's maximum
    found = errors(validate(api, document("urn:uuid:p", "urn:uuid:p")))
    assert "at most 1" in found["Bundle.entry[0].resource.section[0].entry"]
    # the patient slice holds a Patient that does not conform to the slice's targetProfile: said at the reference
    bundle = document("urn:uuid:p")
    del bundle["entry"][1]["resource"]["meta"]
    del bundle["entry"][1]["resource"]["identifier"]
    found = errors(validate(api, bundle))
    assert f"does not conform to {tp.PATIENT}" in found["Bundle.entry[0].resource.section[0].entry[0].reference"]


def test_profile_discriminator_with_two_slices_of_one_type(api) -> None:  # type: ignore[no-untyped-def]
    for res in [*tp.terminology(), tp.patient_profile(), tp.observation_profile(), tp.referring_profile(),
                tp.observations_bundle_profile()]:
        put(api, res)
    referring = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
                 "subject": {"reference": "Patient/elsewhere"}}
    bp = {k: v for k, v in tp.good_observation().items() if k != "meta"}
    bundle = {"resourceType": "Bundle", "meta": {"profile": [tp.OBSERVATIONS]}, "type": "collection",
              "entry": [{"fullUrl": "urn:uuid:1", "resource": referring}, {"fullUrl": "urn:uuid:2", "resource": bp}]}
    # neither claims a profile: each goes to the slice whose profile it conforms to (not the first Observation one)
    assert errors(validate(api, bundle)) == {}
    del referring["subject"]  # conforms to neither: the first slice's profile says why
    found = errors(validate(api, bundle))
    assert "Bundle.entry[0].resource.category" in found and "Bundle.entry[1].resource.category" not in found
