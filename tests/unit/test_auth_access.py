"""The access policy without a database: role table, patient compartment, v2 constraints, passwords."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_server.auth.access import AccessContext
from fhir_server.auth.compartment import in_patient_compartment, patient_compartment_elements
from fhir_server.auth.passwords import hash_secret, policy_problems, verify_secret
from fhir_server.auth.roles import ROLE_PERMISSIONS, ROLES, role_allows
from fhir_server.auth.scopes import resource_scopes
from fhir_server.errors import FhirError
from fhir_server.storage.repository import Version

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def version(rtype: str, content: dict[str, Any] | None, rid: str = "1") -> Version:
    return Version(rtype, rid, 1, NOW, content is None, content)


def obs(patient: str, category: str = "laboratory") -> dict[str, Any]:
    return {"resourceType": "Observation", "id": "o", "subject": {"reference": f"Patient/{patient}"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}]}


def test_every_issue_role_is_in_the_table() -> None:
    assert set(ROLES) == {"admin", "doctor", "nurse", "receptionist", "billing_officer", "lab_technician",
                          "pharmacist", "radiologist", "manager", "patient", "interface-analyst"}
    assert all(set(p) <= set("cruds") for table in ROLE_PERMISSIONS.values() for p in table.values())


@pytest.mark.parametrize(("role", "rtype", "letter", "allowed"), [
    ("receptionist", "Observation", "r", False),
    ("interface-analyst", "Subscription", "s", True),  # the console's operator: Subscriptions, no record
    ("interface-analyst", "Patient", "r", False),
    ("interface-analyst", "Subscription", "u", False),
    ("receptionist", "Patient", "c", True),
    ("receptionist", "Appointment", "d", True),
    ("billing_officer", "Observation", "r", True),
    ("billing_officer", "Observation", "c", False),
    ("billing_officer", "Condition", "u", False),
    ("billing_officer", "Claim", "c", True),
    ("lab_technician", "Observation", "c", True),
    ("lab_technician", "MedicationRequest", "c", False),
    ("pharmacist", "MedicationDispense", "c", True),
    ("nurse", "Patient", "d", False),
    ("doctor", "Observation", "d", True),
    ("patient", "Observation", "c", False),
    ("manager", "Patient", "r", False),
    ("manager", "MeasureReport", "r", True),
    ("nobody", "Patient", "r", False),
])
def test_role_table(role: str, rtype: str, letter: str, allowed: bool) -> None:
    assert role_allows(role, rtype, letter) is allowed


def test_compartment_from_the_definition() -> None:
    elements = patient_compartment_elements()
    assert elements["Observation"] == {"subject", "performer"}
    assert "patient" in elements["AllergyIntolerance"]
    assert in_patient_compartment("Observation", obs("7"), "7")
    assert not in_patient_compartment("Observation", obs("8"), "7")
    assert in_patient_compartment("Observation", {"subject": {"reference": "http://x/fhir/Patient/7/_history/2"}}, "7")
    assert in_patient_compartment("Encounter", {"subject": {"reference": "Patient/7"}}, "7")
    assert not in_patient_compartment("Observation", {"focus": [{"reference": "Patient/7"}]}, "7")  # not a link
    assert in_patient_compartment("Patient", {"id": "7"}, "7")
    assert not in_patient_compartment("Patient", {"id": "8"}, "7")
    assert not in_patient_compartment("Organization", {"id": "7"}, "7")  # not in the compartment at all


def test_patient_scope_confines_reads_and_writes() -> None:
    access = AccessContext(tuple(resource_scopes("patient/Observation.rs patient/Patient.rs")), "doctor", "7")
    assert access.can_read(version("Observation", obs("7")))
    assert not access.can_read(version("Observation", obs("8")))
    assert not access.can_read(version("Observation", None))  # a deletion cannot prove membership
    assert not access.can_read(version("Condition", {"subject": {"reference": "Patient/7"}}))
    with pytest.raises(FhirError) as err:
        access.check_write("Observation", obs("7"), None)
    assert err.value.status == 403 and err.value.issues[0].expression == ("Observation",)
    writer = AccessContext(tuple(resource_scopes("patient/Observation.cu")), "doctor", "7")
    writer.check_write("Observation", obs("7"), None)
    writer.check_write("Observation", obs("7"), version("Observation", obs("7")))
    with pytest.raises(FhirError):
        writer.check_write("Observation", obs("8"), version("Observation", obs("7")))  # moving it out
    with pytest.raises(FhirError):
        writer.check_write("Observation", None, version("Observation", obs("7")))  # no "d"


def test_no_patient_in_context_means_no_patient_scope_access() -> None:
    access = AccessContext(tuple(resource_scopes("patient/*.rs")), "doctor", None)
    assert not access.can_read(version("Observation", obs("7")))


def test_granular_category_constraint() -> None:
    system = "http://terminology.hl7.org/CodeSystem/observation-category"
    access = AccessContext(tuple(resource_scopes(f"user/Observation.rs?category={system}|laboratory")), "doctor")
    assert access.can_read(version("Observation", obs("1", "laboratory")))
    assert not access.can_read(version("Observation", obs("1", "vital-signs")))
    bare = AccessContext(tuple(resource_scopes("user/Observation.rs?category=vital-signs")), "doctor")
    assert bare.can_read(version("Observation", obs("1", "vital-signs")))
    odd = AccessContext(tuple(resource_scopes("user/Observation.rs?date=ge2020")), "doctor")
    assert not odd.can_read(version("Observation", obs("1")))  # a constraint we cannot evaluate: closed


def test_role_caps_scope_and_system_tokens_have_no_role() -> None:
    receptionist = AccessContext(tuple(resource_scopes("user/*.cruds")), "receptionist")
    assert receptionist.can_read(version("Patient", {"id": "1"}))
    assert not receptionist.can_read(version("Observation", obs("1")))
    system = AccessContext(tuple(resource_scopes("system/*.rs")))
    assert system.can_read(version("Observation", obs("1")))
    with pytest.raises(FhirError):
        system.check_write("Observation", obs("1"), None)


def test_patient_user_sees_only_self_even_with_user_scopes() -> None:
    me = AccessContext(tuple(resource_scopes("user/*.rs")), "patient", None, "Patient/7")
    assert me.can_read(version("Observation", obs("7")))
    assert not me.can_read(version("Observation", obs("8")))
    lost = AccessContext(tuple(resource_scopes("user/*.rs")), "patient", None, None)
    assert not lost.can_read(version("Observation", obs("7")))


def test_password_hashing_and_policy() -> None:
    stored = hash_secret("Correct-Horse-42!")
    assert stored.startswith("$argon2id$")
    assert verify_secret(stored, "Correct-Horse-42!")
    assert not verify_secret(stored, "correct-horse-42!")
    assert not verify_secret(None, "anything")
    assert policy_problems("Correct-Horse-42!") == []
    assert policy_problems("short1A!")  # too short
    assert policy_problems("alllowercaseletters")  # one class


def test_search_compartment_for_sql_filters() -> None:
    patient_scoped = AccessContext(tuple(resource_scopes("patient/*.rs")), "doctor", "7")
    assert patient_scoped.search_compartment("Observation") == ("7", ("subject", "performer"))
    assert patient_scoped.search_compartment("Patient") == ("7", ("link",))
    assert patient_scoped.search_compartment("Organization") == ("7", ())  # not in any patient's compartment
    mixed = AccessContext(tuple(resource_scopes("patient/*.rs user/Observation.rs")), "doctor", "7")
    assert mixed.search_compartment("Observation") is None
    assert mixed.search_compartment("Condition") == ("7", ("patient", "asserter"))
    assert AccessContext(tuple(resource_scopes("system/*.rs"))).search_compartment("Observation") is None
    assert AccessContext(tuple(resource_scopes("patient/*.rs")), "doctor", None).search_compartment("Observation") \
        == ("", ())
    me = AccessContext(tuple(resource_scopes("user/*.rs")), "patient", None, "Patient/9")
    assert me.search_compartment("Encounter") == ("9", ("patient",))


def test_search_compartment_respects_the_role() -> None:
    receptionist = AccessContext(tuple(resource_scopes("user/*.rs")), "receptionist")
    assert receptionist.search_compartment("Observation") == ("", ())  # the role never reads Observations
    assert receptionist.search_compartment("Patient") is None


@pytest.mark.parametrize(("scope", "reads", "searches"), [
    ("system/Observation.r", True, False),  # SMART v2: r is read/vread/instance history only
    ("system/Observation.s", False, True),  # s is search (and type/system history) only
    ("system/Observation.rs", True, True),
    ("system/Observation.read", True, True),  # v1 read = rs
    ("system/Observation.cud", False, False),
])
def test_v2_letters_separate_read_from_search(scope: str, reads: bool, searches: bool) -> None:
    access = AccessContext(tuple(resource_scopes(scope)))
    assert access.can_read(version("Observation", obs("1"))) is reads
    assert access.can_search(version("Observation", obs("1"))) is searches
    assert (access.search_compartment("Observation") is None) is searches  # None: no SQL restriction


def test_a_patient_user_is_held_to_the_scopes_in_search() -> None:
    """Issue 12 point 7: patient/Observation.rs searches no Conditions, not even the patient's own."""
    access = AccessContext(tuple(resource_scopes("patient/Observation.rs")), role="patient", patient="7",
                           fhir_user="Patient/7")
    assert access.search_compartment("Condition") == ("", ())
    assert access.search_compartment("Observation") == ("7", ("subject", "performer"))
    assert not access.can_search(version("Condition", {"subject": {"reference": "Patient/7"}}))
