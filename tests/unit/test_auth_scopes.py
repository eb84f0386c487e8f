"""SMART scope parsing (v1 and v2), tolerance of real-world scope strings, and requested ∩ allowed."""

from __future__ import annotations

import pytest

from fhir_server.auth.scopes import ResourceScope, describe, grantable, parse_resource_scope, resource_scopes, split


@pytest.mark.parametrize(("text", "expected"), [
    ("patient/Observation.read", ResourceScope("patient", "Observation", "rs")),
    ("user/*.write", ResourceScope("user", "*", "cud")),
    ("system/*.*", ResourceScope("system", "*", "cruds")),
    ("patient/Observation.rs", ResourceScope("patient", "Observation", "rs")),
    ("user/Patient.cruds", ResourceScope("user", "Patient", "cruds")),
    ("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
     ResourceScope("patient", "Observation", "rs", (("category",
                   "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),))),
])
def test_parse(text: str, expected: ResourceScope) -> None:
    assert parse_resource_scope(text) == expected


@pytest.mark.parametrize("text", ["patient/Observation.sr", "patient/Observation.rr", "clinic/Patient.read",
                                  "patient/observation.read", "patient/Observation", "openid", "launch/patient",
                                  "patient/Observation.x", ""])
def test_not_resource_scopes(text: str) -> None:
    assert parse_resource_scope(text) is None


def test_repeats_and_unknown_scopes_are_tolerated() -> None:
    text = "  launch/patient patient/Observation.read  patient/Observation.read foo:bar openid\tfhirUser "
    assert split(text) == ["launch/patient", "patient/Observation.read", "foo:bar", "openid", "fhirUser"]
    assert resource_scopes(text) == [ResourceScope("patient", "Observation", "rs")]


def test_requested_intersected_with_allowed() -> None:
    allowed = "launch/patient openid patient/*.rs user/Observation.cruds system/*.rs"
    assert grantable("patient/Observation.read", allowed) == "patient/Observation.read"
    assert grantable("patient/*.cruds", allowed) == "patient/*.rs"  # narrowed to what the client may have
    assert grantable("user/*.rs", allowed) == "user/Observation.rs"
    assert grantable("user/Patient.rs", allowed) == ""
    assert grantable("openid fhirUser launch/patient offline_access", allowed) == "openid launch/patient"
    assert grantable("patient/Observation.read patient/Observation.read unknown/x", allowed) == \
        "patient/Observation.read"
    assert grantable("", allowed) == ""


def test_constraints_survive_intersection() -> None:
    granted = grantable("patient/Observation.rs?category=laboratory", "patient/*.read")
    assert granted == "patient/Observation.rs?category=laboratory"
    narrowed = grantable("patient/*.rs", "patient/Observation.r?category=vital-signs")
    assert narrowed == "patient/Observation.r?category=vital-signs"


def test_descriptions_for_the_consent_page() -> None:
    assert describe("patient/Observation.rs") == "Read, search Observation records of the selected patient"
    assert describe("offline_access").startswith("Stay signed in")
    assert describe("made-up") == "made-up"
