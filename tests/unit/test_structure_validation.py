"""FHIR R4 validation of incoming resources: the R4 StructureDefinitions decide (fhir_server.validation)."""

from __future__ import annotations

import copy
import glob
import importlib.util
import random
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_server.definitions import bundle_resources, resource_types
from fhir_server.validation import validate_resource
from fhir_server.validation.r4b import r4b_issues, r4b_model
from fhir_server.validation.resource import MAX_ISSUES
from fhir_server.validation.structure import MAX_DEPTH, validate_structure
from fhir_server.validation.tree import required_codes

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SYNTHEA = sorted(glob.glob(str(SHARED / "samples/synthea/*/*/original_fhir_json/*.json")))
NDHM = sorted(glob.glob(str(SHARED / "india/ndhm.in-6.5.0/official-samples/*.json")))
NO_SYNTHEA = "the Synthea samples (../shared/samples/synthea) are not beside this checkout"
NO_NDHM = "the ABDM samples (../shared/india/ndhm.in-6.5.0/official-samples) are not beside this checkout"

EXT = [{"url": "http://example.org/fhir/StructureDefinition/note", "valueString": "n"}]


def problems(resource: dict[str, Any], expected_type: str | None = None) -> list[tuple[str, str]]:
    return [(i.code, i.expression[0] if i.expression else "") for i in validate_resource(resource, expected_type)]


def patient(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **elements}


def observation(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **elements}


# --- one rule per case: the resource, the issue code, the FHIRPath expression ----------------------------------

NEGATIVE = [
    # unknown elements, R4B-only elements and artefacts of other versions
    ("unknown element", patient(favouriteColour="blue"), "structure", "Patient.favouriteColour"),
    ("R4B-only element", {"resourceType": "PlanDefinition", "status": "draft", "subjectCanonical": "http://x"},
     "structure", "PlanDefinition.subjectCanonical"),
    ("R4B-only datatype in extension", patient(extension=[{"url": "http://x", "valueCodeableReference": {}}]),
     "structure", "Patient.extension[0].valueCodeableReference"),
    ("fhir_comments is not R4 JSON", patient(fhir_comments=["c"]), "structure", "Patient.fhir_comments"),
    ("resourceType inside a datatype", patient(name=[{"resourceType": "HumanName", "family": "x"}]),
     "structure", "Patient.name[0].resourceType"),
    # JSON types of primitives
    ("boolean as a string", patient(active="yes"), "value", "Patient.active"),
    ("boolean as a number", patient(active=1), "value", "Patient.active"),
    ("integer as a string", patient(multipleBirthInteger="2"), "value", "Patient.multipleBirth.ofType(integer)"),
    ("integer as a boolean", patient(multipleBirthInteger=True), "value", "Patient.multipleBirth.ofType(integer)"),
    ("integer as a decimal", patient(multipleBirthInteger=2.5), "value", "Patient.multipleBirth.ofType(integer)"),
    ("integer out of 32-bit range", patient(multipleBirthInteger=2**31), "value",
     "Patient.multipleBirth.ofType(integer)"),
    ("decimal as a string", observation(valueQuantity={"value": "1.5"}), "value",
     "Observation.value.ofType(Quantity).value"),
    ("string as a number", patient(name=[{"family": 7}]), "value", "Patient.name[0].family"),
    ("positiveInt 0", {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                       "valueSampledData": {"origin": {"value": 1}, "period": 1, "dimensions": 0, "data": "1"}},
     "value", "Observation.value.ofType(SampledData).dimensions"),
    ("unsignedInt -1", {"resourceType": "ImagingStudy", "status": "available", "subject": {"reference": "Patient/1"},
                        "numberOfSeries": -1}, "value", "ImagingStudy.numberOfSeries"),
    # primitive syntax (the regexes of the R4 StructureDefinitions) and calendar dates
    ("date out of range", patient(birthDate="1990-13-45"), "value", "Patient.birthDate"),
    ("date that does not exist", patient(birthDate="2023-02-29"), "value", "Patient.birthDate"),
    ("date with a time", patient(birthDate="1990-01-01T00:00:00Z"), "value", "Patient.birthDate"),
    ("dateTime without time zone", observation(effectiveDateTime="2020-01-01T10:00:00"), "value",
     "Observation.effective.ofType(dateTime)"),
    ("instant without time", observation(issued="2020-01-01"), "value", "Observation.issued"),
    ("time 24:00", observation(valueTime="24:00:00"), "value", "Observation.value.ofType(time)"),
    ("code with leading space", observation(status=" final"), "value", "Observation.status"),
    ("uri with a space", patient(implicitRules="http://x y"), "value", "Patient.implicitRules"),
    ("oid syntax", patient(extension=[{"url": "http://x", "valueOid": "urn:oid:1.2.x"}]), "value",
     "Patient.extension[0].value.ofType(oid)"),
    ("uuid syntax", patient(extension=[{"url": "http://x", "valueUuid": "urn:uuid:ABC"}]), "value",
     "Patient.extension[0].value.ofType(uuid)"),
    ("base64 alphabet", patient(photo=[{"data": "not base64!"}]), "value", "Patient.photo[0].data"),
    ("narrative is not xhtml", patient(text={"status": "generated", "div": "plain text"}), "value",
     "Patient.text.div"),
    ("empty string", patient(name=[{"family": ""}]), "value", "Patient.name[0].family"),
    # ids
    ("id syntax", patient(id="bad id!"), "value", "Patient.id"),
    ("id too long", patient(id="a" * 65), "value", "Patient.id"),
    ("id as a number", patient(id=5), "value", "Patient.id"),
    ("contained id syntax", patient(contained=[{"resourceType": "Organization", "id": "o/1"}]), "value",
     "Patient.contained[0].id"),
    # arrays exactly for repeating elements, no nulls, no empty objects or arrays
    ("array for a single element", patient(birthDate=["1990-01-01"]), "structure", "Patient.birthDate"),
    ("object for a repeating element", patient(name={"family": "x"}), "structure", "Patient.name"),
    ("primitive for a complex element", patient(maritalStatus="M"), "structure", "Patient.maritalStatus"),
    ("empty object", patient(maritalStatus={}), "structure", "Patient.maritalStatus"),
    ("empty object in an array", patient(name=[{}]), "structure", "Patient.name[0]"),
    ("empty array", patient(name=[]), "structure", "Patient.name"),
    ("null", patient(birthDate=None), "structure", "Patient.birthDate"),
    ("null in a primitive array without extension", patient(name=[{"given": ["a", None]}]), "structure",
     "Patient.name[0].given[1]"),
    # cardinality: required elements, including choice types
    ("required element", {"resourceType": "Observation", "code": {"text": "x"}}, "required", "Observation.status"),
    ("required element in a backbone", patient(link=[{"type": "seealso"}]), "required", "Patient.link[0].other"),
    ("required choice", {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                         "subject": {"reference": "Patient/1"}}, "required", "MedicationRequest.medication"),
    ("required in a datatype", patient(extension=[{"valueString": "x"}]), "required", "Patient.extension[0].url"),
    ("one type per choice", observation(valueString="a", valueBoolean=True), "structure",
     "Observation.value.ofType(boolean)"),
    # primitive extensions: the _element companions
    ("companion not an object", patient(_birthDate="x"), "structure", "Patient.birthDate"),
    ("companion of a complex element", patient(_maritalStatus={"extension": EXT}), "structure",
     "Patient._maritalStatus"),
    ("companion of an unknown element", patient(_colour={"extension": EXT}), "structure", "Patient._colour"),
    ("companion array length", patient(name=[{"given": ["a", "b"], "_given": [None]}]), "structure",
     "Patient.name[0].given"),
    ("companion array of nulls only", patient(name=[{"_given": [None]}]), "structure", "Patient.name[0].given"),
    ("companion with an unknown element", patient(_birthDate={"colour": "x"}), "structure",
     "Patient.birthDate.colour"),
    ("companion extension without url", patient(_birthDate={"extension": [{"valueString": "x"}]}), "required",
     "Patient.birthDate.extension[0].url"),
    ("narrative div takes no extensions", patient(text={"status": "generated", "div": "<div>x</div>",
                                                        "_div": {"extension": EXT}}), "structure",
     "Patient.text.div.extension"),
    # required bindings to closed code lists of the core definitions
    ("gender not in administrative-gender", patient(gender="x"), "code-invalid", "Patient.gender"),
    ("status not in observation-status", observation(status="done"), "code-invalid", "Observation.status"),
    ("code case matters", patient(gender="Male"), "code-invalid", "Patient.gender"),
    ("binding in a datatype", patient(telecom=[{"system": "pager!", "value": "1"}]), "code-invalid",
     "Patient.telecom[0].system"),
    ("binding in a nested datatype", {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                                      "medicationCodeableConcept": {"text": "x"},
                                      "subject": {"reference": "Patient/1"},
                                      "dosageInstruction": [{"timing": {"repeat": {"period": 1,
                                                                                   "periodUnit": "days"}}}]},
     "code-invalid", "MedicationRequest.dosageInstruction[0].timing.repeat.periodUnit"),
    ("binding through contentReference", {"resourceType": "Questionnaire", "status": "draft", "item": [
        {"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "nope"}]}]}, "code-invalid",
     "Questionnaire.item[0].item[0].type"),
    # resources inside resources: contained, Bundle.entry.resource, Parameters
    ("contained without resourceType", patient(contained=[{"id": "o1", "name": "x"}]), "required",
     "Patient.contained[0]"),
    ("contained of an unknown type", patient(contained=[{"resourceType": "Spaceship", "id": "s"}]), "value",
     "Patient.contained[0]"),
    ("contained resource checked in full", patient(contained=[{"resourceType": "Organization", "id": "o",
                                                               "active": "yes"}]), "value",
     "Patient.contained[0].active"),
    ("entry resource without resourceType", {"resourceType": "Bundle", "type": "collection",
                                             "entry": [{"resource": {"id": "1"}}]}, "required",
     "Bundle.entry[0].resource"),
    ("entry resource checked in full", {"resourceType": "Bundle", "type": "collection",
                                        "entry": [{"resource": patient(name=[{"family": 7}])}]}, "value",
     "Bundle.entry[0].resource.name[0].family"),
    ("Parameters resource without resourceType", {"resourceType": "Parameters", "parameter": [
        {"name": "p", "resource": {"name": [{"family": "x"}]}}]}, "required", "Parameters.parameter[0].resource"),
    # R4-only resource types (no R4B model) are validated too
    ("R4-only type: unknown element", {"resourceType": "MedicinalProduct", "name": [{"productName": "x"}],
                                       "brand": "y"}, "structure", "MedicinalProduct.brand"),
    ("R4-only type: datatype in a backbone", {"resourceType": "MedicinalProduct", "name": [{"productName": "x"}],
                                              "manufacturingBusinessOperation": [{"effectiveDate": "2020-13"}]},
     "value",
     "MedicinalProduct.manufacturingBusinessOperation[0].effectiveDate"),
    ("R4-only type: cardinality", {"resourceType": "SubstanceNucleicAcid", "numberOfSubunits": "2"}, "value",
     "SubstanceNucleicAcid.numberOfSubunits"),
]


@pytest.mark.parametrize(("resource", "code", "expression"), [case[1:] for case in NEGATIVE],
                         ids=[case[0] for case in NEGATIVE])
def test_each_rule_names_the_element(resource: dict[str, Any], code: str, expression: str) -> None:
    found = problems(resource)
    assert (code, expression) in found, found
    assert len(found) == 1, f"one issue per problem, got {found}"


POSITIVE = [
    ("empty-ish patient", patient()),
    ("leap day", patient(birthDate="2024-02-29")),
    ("partial dates", patient(birthDate="1990-05", deceasedDateTime="2020")),
    ("dateTime with time zone and leap second", observation(effectiveDateTime="2016-12-31T23:59:60Z")),
    ("decimal as an integer or a float", observation(valueQuantity={"value": 2}, referenceRange=[
        {"low": {"value": 1.5}, "high": {"value": 1e3}}])),
    ("required element given only as an extension", {"resourceType": "Observation", "code": {"text": "x"},
                                                     "_status": {"extension": EXT}}),
    ("primitive array with a null beside an extension", patient(name=[{"given": ["a", None],
                                                                      "_given": [None, {"extension": EXT}]}])),
    ("companion alone", patient(_birthDate={"id": "b1", "extension": EXT})),
    ("companion of a choice", patient(_deceasedBoolean={"extension": EXT})),
    ("no-break space and unicode in a string", patient(name=[{"family": "Sánchez\u00a0Ruiz", "given": ["李"]}])),
    ("whitespace-only string", patient(name=[{"text": "  "}])),
    ("R4's Extension.valueMeta (R4B dropped it)", patient(extension=[{"url": "http://x",
                                                                      "valueMeta": {"versionId": "1"}}])),
    ("R4's Evidence (R4B redesigned it)", {"resourceType": "Evidence", "status": "draft", "name": "e",
                                          "exposureBackground": {"reference": "EvidenceVariable/1"},
                                          "outcome": [{"reference": "EvidenceVariable/2"}]}),
    ("R4-only type", {"resourceType": "MedicinalProduct", "name": [{"productName": "Paracetamol 500"}]}),
    ("R4-only type with a backbone", {"resourceType": "SubstanceSpecification", "name": [{"name": "x",
                                                                                         "preferred": True}]}),
    ("an element named resourceType", {"resourceType": "ExampleScenario", "status": "draft", "instance": [
        {"resourceId": "a", "resourceType": "Patient"}]}),
    ("contained and nested resources", patient(contained=[{"resourceType": "Organization", "id": "o1"}],
                                               managingOrganization={"reference": "#o1"})),
    ("questionnaire items nested through contentReference", {"resourceType": "Questionnaire", "status": "draft",
                                                             "item": [{"linkId": "1", "type": "group", "item": [
                                                                 {"linkId": "1.1", "type": "string"}]}]}),
    ("narrative", patient(text={"status": "generated",
                                "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>x</p></div>'})),
    ("base64 with line breaks", patient(photo=[{"contentType": "image/png", "data": "aGVs\nbG8=\n"}])),
    ("units of time", {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                       "medicationCodeableConcept": {"text": "x"}, "subject": {"reference": "Patient/1"},
                       "dosageInstruction": [{"timing": {"repeat": {"period": 1, "periodUnit": "d"}}}]}),
]


@pytest.mark.parametrize("resource", [case[1] for case in POSITIVE], ids=[case[0] for case in POSITIVE])
def test_valid_r4_is_accepted(resource: dict[str, Any]) -> None:
    assert problems(resource) == []


def test_all_problems_are_reported_one_issue_each() -> None:
    resource = patient(active="yes", multipleBirthInteger="2", gender="x", birthDate="1990-02-30",
                       name=[{"family": 7}], favouriteColour="blue", contact={})
    assert sorted(problems(resource)) == sorted([
        ("value", "Patient.active"), ("value", "Patient.multipleBirth.ofType(integer)"),
        ("code-invalid", "Patient.gender"), ("value", "Patient.birthDate"), ("value", "Patient.name[0].family"),
        ("structure", "Patient.favouriteColour"), ("structure", "Patient.contact")])
    for issue in validate_resource(resource):
        assert issue.severity == "error" and issue.diagnostics.startswith(issue.expression[0] + ": ")


def test_issue_count_is_capped() -> None:
    many = patient(name=[{"family": 7} for _ in range(MAX_ISSUES + 10)])
    issues = validate_resource(many)
    assert len(issues) == MAX_ISSUES + 1 and issues[-1].severity == "information"


def test_resource_type_checks() -> None:
    assert problems({"name": "x"}) == [("required", "resourceType")]
    assert problems({"resourceType": "Citation"}) == [("invalid", "resourceType")]  # R4B-only type
    assert problems(patient(), "Observation") == [("invalid", "resourceType")]
    assert validate_resource([patient()])[0].code == "structure"


@pytest.mark.parametrize("resource_type", sorted(resource_types()))
def test_every_r4_type_is_known(resource_type: str) -> None:
    """A bare resource of each of the 146 R4 types: only its required top-level elements are missing."""
    for code, expression in problems({"resourceType": resource_type, "id": "x1"}):
        assert code == "required" and expression.count(".") == 1 and expression.startswith(resource_type)


def test_r4_types_without_r4b_model_are_validated() -> None:
    r4_only = sorted(t for t in resource_types() if importlib.util.find_spec(f"fhir.resources.R4B.{t.lower()}") is None)
    assert len(r4_only) == 18 and "MedicinalProduct" in r4_only and r4b_model("MedicinalProduct") is None
    for resource_type in r4_only:
        found = [p for p in problems({"resourceType": resource_type, "bogus": 1}) if p[0] != "required"]
        assert found == [("structure", f"{resource_type}.bogus")]


def test_required_codes_come_from_the_generated_data() -> None:
    codes = required_codes()
    assert codes["http://hl7.org/fhir/ValueSet/administrative-gender"] == {"male", "female", "other", "unknown"}
    assert "http://hl7.org/fhir/ValueSet/mimetypes" not in codes  # external, not enumerable
    assert problems(patient(photo=[{"contentType": "application/x-anything"}])) == []


def test_the_core_definitions_are_valid_r4() -> None:
    """The R4 package's own StructureDefinitions are R4 resources: a large, varied positive corpus."""
    sds = bundle_resources("profiles-types") + bundle_resources("profiles-resources")[:120]
    bad = {sd.get("id"): problems(sd) for sd in sds}
    assert {k: v for k, v in bad.items() if v} == {}


# --- real data: every Synthea resource and every ABDM sample validates --------------------------------------------

def _load(path: str) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(Path(path).read_bytes())
    return result


@pytest.mark.skipif(not SYNTHEA, reason=NO_SYNTHEA)
@pytest.mark.parametrize("path", SYNTHEA, ids=[Path(p).stem[:24] for p in SYNTHEA])
def test_synthea_bundles_validate(path: str) -> None:
    bundle = _load(path)
    assert problems(bundle) == []
    for entry in bundle["entry"]:
        assert problems(entry["resource"], entry["resource"]["resourceType"]) == []


@pytest.mark.skipif(not NDHM, reason=NO_NDHM)
def test_abdm_samples_validate() -> None:
    # All 276 are plain R4 resources (their profiles only add extensions and slices, which base R4 allows),
    # so none is skipped; StructureDefinition/ValueSet/CodeSystem samples are included.
    assert len(NDHM) == 276
    bad = {Path(p).name: problems(_load(p)) for p in NDHM}
    assert {k: v for k, v in bad.items() if v} == {}


# --- the R4B models as an oracle: whatever they reject, the R4 validator rejects too --------------------------------

def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    out: list[tuple[tuple[Any, ...], Any]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k != "resourceType":
                out += _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _leaves(v, (*path, i))
    else:
        out.append((path, value))
    return out


def _set(resource: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = resource
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


def _wrong(value: Any) -> Any:
    if isinstance(value, bool):
        return "true"
    if isinstance(value, int | float):
        return str(value)
    return {"value": value} if len(value) % 2 else 12345


def _json_path(resource_type: str, path: tuple[Any, ...]) -> str:
    return resource_type + "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)


def _json_path_of(expression: str) -> str:
    """Patient.multipleBirth.ofType(integer) -> Patient.multipleBirthInteger"""
    return re.sub(r"\.ofType\((\w)(\w*)\)", lambda m: m[1].upper() + m[2], expression)


@pytest.mark.skipif(not SYNTHEA, reason=NO_SYNTHEA)
def test_r4_rejects_whatever_r4b_rejects() -> None:
    """Mutate Synthea resources at random (wrong JSON types, unknown elements, missing required elements,
    impossible dates): each mutation R4B's models reject is rejected by the R4 validator as well, at the same
    element. The R4 validator rejects more (e.g. "active": "yes", which R4B coerces)."""
    rng = random.Random(20240601)
    resources = [e["resource"] for path in SYNTHEA[:4] for e in _load(path)["entry"]]
    sample = rng.sample(resources, 150)
    r4b_rejected = 0
    for original in sample:
        leaves = _leaves(original)
        for kind in ("wrong-type", "unknown", "drop-required", "bad-date"):
            resource = copy.deepcopy(original)
            if kind == "wrong-type":
                path, value = rng.choice(leaves)
                _set(resource, path, _wrong(value))
            elif kind == "unknown":
                path = rng.choice([p for p, _ in leaves if isinstance(p[-1], str)])[:-1]
                _set(resource, (*path, "bogusElement"), "x")
            elif kind == "drop-required":
                for key in ("status", "code", "intent", "patient", "subject", "type"):
                    resource.pop(key, None)
            else:
                resource["meta"] = {"lastUpdated": "2021-02-30T10:00:00Z"}
            ours = validate_resource(resource)
            theirs = r4b_issues(resource)
            if theirs:
                r4b_rejected += 1
                assert ours, f"R4B rejects but R4 accepts: {theirs[0].diagnostics}"
            if kind in ("wrong-type", "unknown"):
                at = _json_path(resource["resourceType"], path if kind == "wrong-type" else (*path, "bogusElement"))
                assert at in [_json_path_of(i.expression[0]) for i in ours], (at, ours)
    assert r4b_rejected > 300


def test_deep_nesting_is_an_issue_not_a_crash() -> None:
    extension: dict[str, Any] = {"url": "http://x", "valueString": "leaf"}
    for _ in range(2000):
        extension = {"url": "http://x", "extension": [extension]}
    found = problems(patient(extension=[extension]))
    assert len(found) == 1 and found[0][0] == "structure" and found[0][1].startswith("Patient.extension[0]")


def _levels(levels: int) -> dict[str, Any]:
    """A Patient whose JSON is ``levels`` deep: nested extensions, each an object inside an array."""
    extension: dict[str, Any] = {"url": "http://x", "valueString": "leaf"}
    for _ in range((levels - 3) // 2):
        extension = {"url": "http://x", "extension": [extension]}
    return patient(extension=[extension])


def test_nesting_is_limited_to_what_storage_writes() -> None:
    assert problems(_levels(MAX_DEPTH)) == []  # Patient (1), extension array (2), ... the 100th level
    deeper = problems(_levels(MAX_DEPTH + 2))
    assert len(deeper) == 1 and deeper[0][0] == "structure"
    assert "more than 100 levels" in validate_structure(_levels(MAX_DEPTH + 2))[0].diagnostics


@pytest.mark.parametrize(("element", "value", "path"), [
    ("name", [{"family": "a\x00b"}], "Patient.name[0].family"),
    ("gender", "ma\x00le", "Patient.gender"),
    ("telecom", [{"system": "url", "value": "http://x/\x00"}], "Patient.telecom[0].value"),
    ("text", {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">\x00</div>'},
     "Patient.text.div"),
    ("extension", [{"url": "http://x", "valueMarkdown": "**\x00**"}], "Patient.extension[0].value.ofType(markdown)"),
])
def test_nul_is_refused_in_every_kind_of_string(element: str, value: Any, path: str) -> None:
    found = validate_structure(patient(**{element: value}))
    assert len(found) == 1 and found[0].expression == (path,) and "U+0000" in found[0].diagnostics, found


def test_string_size_limit() -> None:
    assert problems(patient(name=[{"text": "x" * (1024 * 1024 + 1)}])) == [("value", "Patient.name[0].text")]
    assert problems(patient(photo=[{"data": "QUFB" * 300_000}])) == []  # base64Binary has no such limit
