"""Reference targets against a non-core targetProfile, when the target is in the request (a Bundle entry or
a contained resource), through $validate on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration import validate_profiles as tp
from tests.integration.test_validate_operation import errors, put, validate


@pytest.fixture
def referring(api):  # type: ignore[no-untyped-def]
    for res in [*tp.terminology(), tp.patient_profile(), tp.referring_profile()]:
        put(api, res)
    return api


def observation(subject: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "meta": {"profile": [tp.REFERRING]}, "status": "final",
            "code": {"text": "BP"}, "subject": {"reference": subject}}


def unclaimed(patient: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in patient.items() if k != "meta"}


def collection(*entries: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": url, "resource": res} for url, res in entries]}


def test_bundle_target_that_conforms_without_claiming_it(referring) -> None:  # type: ignore[no-untyped-def]
    bundle = collection(("urn:uuid:o1", observation("urn:uuid:p1")), ("urn:uuid:p1", unclaimed(tp.good_patient())))
    assert errors(validate(referring, bundle)) == {}
    # a relative reference to an entry by type and id (fullUrl on the server's base)
    bundle = collection(("http://x.org/fhir/Observation/o1", observation("Patient/p1")),
                        ("http://x.org/fhir/Patient/p1", unclaimed(tp.good_patient())))
    assert errors(validate(referring, bundle)) == {}
    # ... found by its fullUrl when the entry's resource has no id (here: one that does not conform)
    del bundle["entry"][1]["resource"]["id"]
    del bundle["entry"][1]["resource"]["identifier"]
    assert "does not conform" in errors(validate(referring, bundle))["Bundle.entry[0].resource.subject.reference"]


def test_bundle_target_that_does_not_conform(referring) -> None:  # type: ignore[no-untyped-def]
    patient = unclaimed(tp.good_patient())
    del patient["identifier"]
    bundle = collection(("urn:uuid:o1", observation("urn:uuid:p1")), ("urn:uuid:p1", patient))
    found = errors(validate(referring, bundle))
    message = found.pop("Bundle.entry[0].resource.subject.reference")
    assert f"does not conform to {tp.PATIENT}" in message and "minimum cardinality of identifier" in message
    assert found == {}
    # a target claiming the profile is validated where it stands: its errors are its own, not the reference's
    patient["meta"] = {"profile": [tp.PATIENT]}
    found = errors(validate(referring, bundle))
    assert "Bundle.entry[0].resource.subject.reference" not in found
    assert "minimum cardinality" in found["Bundle.entry[1].resource.identifier"]


def test_contained_target_and_wrong_type(referring) -> None:  # type: ignore[no-untyped-def]
    patient = unclaimed(tp.good_patient())
    obs = {**observation("#p1"), "contained": [patient]}
    assert errors(validate(referring, obs)) == {}
    patient["gender"] = "unknown"  # outside the profile's required value set
    found = errors(validate(referring, obs))
    assert "does not conform" in found["Observation.subject.reference"] and "unknown" in \
        found["Observation.subject.reference"]
    wrong = {**observation("#g1"), "contained": [{"resourceType": "Group", "id": "g1", "type": "person",
                                                    "actual": True}]}
    assert "a reference to Group is not allowed here (allowed: Patient)" in \
        errors(validate(referring, wrong))["Observation.subject.reference"]
    # a target elsewhere (on a server) is not fetched: its type is all that is checked
    assert errors(validate(referring, observation("Patient/elsewhere"))) == {}


def test_contained_reference_resolves_in_its_own_resource(referring) -> None:  # type: ignore[no-untyped-def]
    """``#p1`` in one entry is that entry's contained resource, whatever another entry contains as ``p1``."""
    group = {"resourceType": "Group", "id": "p1", "type": "person", "actual": True}
    first = {**observation("#p1"), "contained": [unclaimed(tp.good_patient())]}
    second = {**observation("#p1"), "contained": [group]}
    found = errors(validate(referring, collection(("urn:uuid:1", first), ("urn:uuid:2", second))))
    assert list(found) == ["Bundle.entry[1].resource.subject.reference"]
    assert "a reference to Group is not allowed" in found["Bundle.entry[1].resource.subject.reference"]
