"""The role masks table (fhir_server/auth/masks.py) names real R4 elements, and masking then writing back the
masked view restores exactly what was hidden."""

from __future__ import annotations

import pytest

from fhir_server.auth.masks import ROLE_MASKS, SD, SUBSETTED, mask_content, restore_masked
from fhir_server.auth.roles import ROLE_PERMISSIONS, role_allows
from fhir_server.definitions import resource_structure_definitions
from fhir_server.errors import FhirError


def test_every_mask_names_an_r4_element_of_a_type_the_role_reads() -> None:
    sds = resource_structure_definitions()
    for role, table in ROLE_MASKS.items():
        assert role in ROLE_PERMISSIONS
        for rtype, specs in table.items():
            assert role_allows(role, rtype, "r"), (role, rtype)
            elements = {e["path"]: e for e in sds[rtype]["snapshot"]["element"]}
            for spec in specs:
                if spec.startswith("extension("):
                    assert spec[len("extension("):-1].startswith("http"), spec
                    continue
                assert f"{rtype}.{spec}" in elements, spec
                parent = spec.rpartition(".")[0]
                if parent:  # restoring needs one parent object, not a list of them
                    assert elements[f"{rtype}.{parent}"]["max"] == "1", spec


ENCOUNTER = {"resourceType": "Encounter", "id": "e1", "meta": {"versionId": "4", "security": [
    {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]},
             "status": "planned", "reasonCode": [{"text": "chest pain"}], "_reasonCode": [{"id": "x"}],
             "hospitalization": {"dietPreference": [{"text": "diabetic"}]},
             "extension": [{"url": SD + "other", "valueBoolean": True}]}
SPECS = ROLE_MASKS["receptionist"]["Encounter"]


def test_mask_then_write_back_restores_what_was_hidden() -> None:
    masked = mask_content(ENCOUNTER, SPECS)
    assert set(masked) == {"resourceType", "id", "meta", "status", "extension"}
    assert masked["meta"]["security"][-1] == SUBSETTED and len(masked["meta"]["security"]) == 2
    assert ENCOUNTER["reasonCode"] and ENCOUNTER["hospitalization"]  # the stored content is untouched
    edited = {**masked, "status": "arrived", "hospitalization": {"admitSource": {"text": "walk-in"}}}
    stored = restore_masked("Encounter", edited, ENCOUNTER, SPECS)
    assert stored["status"] == "arrived" and stored["reasonCode"] == ENCOUNTER["reasonCode"]
    assert stored["_reasonCode"] == [{"id": "x"}]
    assert stored["hospitalization"] == {"admitSource": {"text": "walk-in"}, "dietPreference": [{"text": "diabetic"}]}
    assert stored["meta"]["security"] == ENCOUNTER["meta"]["security"]  # SUBSETTED taken off, the rest kept


def test_patient_extension_masks() -> None:
    specs = ROLE_MASKS["receptionist"]["Patient"]
    patient = {"resourceType": "Patient", "extension": [{"url": SD + "patient-disability", "valueCodeableConcept": {}},
                                                        {"url": SD + "patient-birthPlace", "valueAddress": {}}]}
    masked = mask_content(patient, specs)
    assert [e["url"] for e in masked["extension"]] == [SD + "patient-birthPlace"]
    back = restore_masked("Patient", masked, patient, specs)
    assert sorted(e["url"] for e in back["extension"]) == sorted(e["url"] for e in patient["extension"])
    with pytest.raises(FhirError) as refused:
        restore_masked("Patient", patient, None, specs)
    assert refused.value.status == 403
    assert refused.value.issues[0].expression == (f"Patient.extension({SD}patient-disability)",)


@pytest.mark.parametrize("element", ["reasonCode", "_reasonCode", "diagnosis"])
def test_setting_a_masked_element_is_refused(element: str) -> None:
    with pytest.raises(FhirError) as refused:
        restore_masked("Encounter", {"resourceType": "Encounter", element: [{}]}, ENCOUNTER, SPECS)
    assert refused.value.status == 403 and refused.value.issues[0].expression == (f"Encounter.{element.lstrip('_')}",)
