"""Base-definition rules of the profile validator without a database: the narrative's XHTML (txt-1, txt-2),
extension contexts and modifier extensions."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.validation.service import validate_profiles

NS = 'xmlns="http://www.w3.org/1999/xhtml"'


def issues(resource: dict[str, Any], severity: str = "error") -> dict[str, str]:
    return {i.expression[0]: i.diagnostics for i in validate_profiles(None, resource, []) if i.severity == severity}


def narrated(div: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "text": {"status": "generated", "div": div}}


@pytest.mark.parametrize("div", [
    f"<div {NS}>Asha Rao</div>",
    f'<div {NS} xml:lang="en"><p class="x" style="color:red">a<br/><b>b</b></p><a href="#x">x</a><a name="n"/></div>',
    f'<div {NS}><table border="1"><tr><td colspan="2">1 &amp; 2 &#160;</td></tr></table></div>',
    f'<div {NS}><img src="#pic" alt="photo"/></div>',  # an image is content
])
def test_narratives_that_hold(div: str) -> None:
    assert issues(narrated(div)) == {}


@pytest.mark.parametrize(("div", "key", "why"), [
    (f"<div {NS}><script>alert(1)</script></div>", "txt-1", "<script> is not allowed"),
    (f'<div {NS}><p onclick="go()">a</p></div>', "txt-1", "'onclick' of <p>"),
    (f"<div {NS}><form>a</form></div>", "txt-1", "<form>"),
    (f"<div {NS}><a>no target</a></div>", "txt-1", "href or a name"),
    ("<div>no namespace</div>", "txt-1", "XHTML namespace"),
    (f"<div {NS}>&nbsp;</div>", "txt-1", "undefined entity"),
    (f"<div {NS}><p>open</div>", "txt-1", "not well-formed"),
    (f"<div {NS}> <p>  </p> </div>", "txt-2", "no non-whitespace content"),
])
def test_narratives_that_break_txt_1_or_txt_2(div: str, key: str, why: str) -> None:
    found = issues(narrated(div))
    assert list(found) == ["Patient.text.div"]
    assert found["Patient.text.div"].startswith(f"Patient.text.div: {key}: ") and why in found["Patient.text.div"]


def test_narrative_of_a_contained_resource_is_checked_too() -> None:
    res = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "contained": [{"resourceType": "Patient", "id": "p", **narrated(f"<div {NS}><iframe/></div>")}]}
    assert "<iframe>" in issues(res)["Observation.contained[0].text.div"]


SD = "http://hl7.org/fhir/StructureDefinition/"
BIRTH_PLACE = {"url": SD + "patient-birthPlace", "valueAddress": {"city": "Pune"}}


def test_extension_used_where_its_context_allows() -> None:
    patient = {"resourceType": "Patient", "extension": [BIRTH_PLACE],
               "name": [{"family": "Rao", "extension": [{"url": SD + "humanname-assembly-order", "valueCode": "NL1"}]}],
               # a code is a string: the string context (rendering-markdown) allows it
               "_gender": {"extension": [{"url": SD + "rendering-markdown", "valueMarkdown": "*x*"}]},
               "gender": "female"}
    assert issues(patient) == {}
    questionnaire = {"resourceType": "Questionnaire", "status": "draft", "item": [{
        "linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "date", "extension": [
            {"url": SD + "minValue", "valueDate": "2020-01-01"}]}]}]}  # Questionnaire.item, nested (contentReference)
    assert issues(questionnaire) == {}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}]}
    assert issues(bundle) == {}


def test_extension_outside_its_context_is_an_error() -> None:
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "extension": [BIRTH_PLACE], "valueQuantity": {"value": 1, "extension": [
                       {"url": SD + "humanname-assembly-order", "valueCode": "NL1"}]}}
    found = issues(observation)
    assert "not allowed on Observation (its context: Patient)" in found["Observation.extension[0]"]
    assert "not allowed on Observation.value (its context: HumanName)" in \
        found["Observation.value.ofType(Quantity).extension[0]"]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": observation}]}
    assert "not allowed on Observation " in issues(bundle)["Bundle.entry[0].resource.extension[0]"]


def test_modifier_extensions() -> None:
    do_not = {"url": SD + "request-doNotPerform", "valueBoolean": True}
    order = {"resourceType": "NutritionOrder", "status": "active", "intent": "order", "dateTime": "2024-01-01",
             "patient": {"reference": "Patient/1"}}
    assert issues({**order, "modifierExtension": [do_not]}) == {}
    assert "belongs in modifierExtension" in issues({**order, "extension": [do_not]})["NutritionOrder.extension[0]"]
    wrong = issues({**order, "modifierExtension": [{"url": SD + "data-absent-reason", "valueCode": "unknown"}]})
    assert "is not a modifier extension: it belongs in extension" in wrong["NutritionOrder.modifierExtension[0]"]
    unknown = {"url": "http://example.org/fhir/StructureDefinition/no-such", "valueBoolean": True}
    refused = issues({**order, "modifierExtension": [unknown]})
    assert "may not be ignored" in refused["NutritionOrder.modifierExtension[0]"]
    assert issues({**order, "extension": [unknown]}) == {}  # an unknown plain extension: a warning only
    assert "not known" in issues({**order, "extension": [unknown]}, "warning")["NutritionOrder.extension[0]"]
