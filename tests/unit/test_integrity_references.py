"""Which references referential integrity checks (rest/integrity.py), and the element paths it names."""

from __future__ import annotations

from fhir_server.rest.integrity import local_target, references, targets

BASE = "https://fhir.hospital.example/fhir"


def test_local_targets() -> None:
    assert local_target("Patient/1") == ("Patient", "1", None)
    assert local_target("Patient/1/_history/3") == ("Patient", "1", 3)
    assert local_target(f"{BASE}/Patient/1", BASE) == ("Patient", "1", None)
    assert local_target(f"{BASE}/Patient/1/_history/2", BASE + "/") == ("Patient", "1", 2)
    for other in ("#p1", "urn:uuid:0b6f6a4e-0000-4000-8000-000000000001", "https://other.example/fhir/Patient/1",
                  f"{BASE}/Patient/1", "Patient?identifier=x|1", "Unknown/1", "Patient/a b", "Patient/1/_history/x",
                  "Patient", "Patient/1/extra"):
        assert local_target(other) is None, other


def test_references_name_their_elements() -> None:
    resource = {
        "resourceType": "Observation", "subject": {"reference": "Patient/1"},
        "performer": [{"display": "x"}, {"reference": "Practitioner/2"}],
        "contained": [{"resourceType": "Patient", "id": "c", "managingOrganization": {"reference": "Organization/3"}}],
        "extension": [{"url": "http://example.org/x", "valueReference": {"reference": "Device/4"}}],
        "focus": [{"reference": "#c"}],
    }
    assert references(resource) == [
        ("Observation.subject", ("Patient", "1", None)),
        ("Observation.performer[1]", ("Practitioner", "2", None)),
        ("Observation.contained[0].managingOrganization", ("Organization", "3", None)),
        ("Observation.extension[0].valueReference", ("Device", "4", None)),
    ]


def test_a_stored_bundles_entries_are_not_ours() -> None:
    bundle = {"resourceType": "Bundle", "type": "document", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Composition", "subject": {"reference": "Patient/9"}}}]}
    assert references(bundle) == []


def test_the_fast_path_finds_the_same_targets() -> None:
    resource = {"resourceType": "Observation", "subject": {"reference": "Patient/1"},
                "note": [{"text": '"reference":"Patient/in-text"'}],
                "extension": [{"url": "u", "valueReference": {"reference": "Device/4/_history/2"}}],
                "derivedFrom": [{"reference": "https://other.example/Observation/1"}]}
    assert targets(resource) == {t for _p, t in references(resource)} == {("Patient", "1", None),
                                                                          ("Device", "4", 2)}
