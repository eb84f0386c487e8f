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
