"""FHIR XML <-> JSON (fhir_server/formats/xml.py): the spec's rules, round trips, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from fhir_server.formats.xml import XmlError, equivalent, from_xml, to_xml

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "synthea"

# Written after the R4 specification's patient-example.xml: an extension on a primitive, a narrative,
# element ids as attributes, a repeating primitive, a choice element and a contained resource.
PATIENT_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <id value="example"/>
  <text>
    <status value="generated"/>
    <div xmlns="http://www.w3.org/1999/xhtml"><p>Peter <b>Chalmers</b> &amp; family</p></div>
  </text>
  <contained>
    <Organization>
      <id value="org1"/>
      <name value="Good Health Clinic"/>
    </Organization>
  </contained>
  <identifier>
    <use value="usual"/>
    <system value="urn:oid:1.2.36.146.595.217.0.1"/>
    <value value="12345"/>
  </identifier>
  <active value="true"/>
  <name id="n1">
    <family value="Chalmers"/>
    <given value="Peter"/>
    <given id="g2">
      <extension url="http://example.org/nickname">
        <valueBoolean value="false"/>
      </extension>
    </given>
    <given value="James"/>
  </name>
  <gender value="male"/>
  <birthDate value="1974-12-25">
    <extension url="http://hl7.org/fhir/StructureDefinition/patient-birthTime">
      <valueDateTime value="1974-12-25T14:35:45-05:00"/>
    </extension>
  </birthDate>
  <deceasedBoolean value="false"/>
  <multipleBirthInteger value="2"/>
  <managingOrganization>
    <reference value="#org1"/>
  </managingOrganization>
</Patient>
"""

PATIENT_JSON = {
    "resourceType": "Patient", "id": "example",
    "text": {"status": "generated",
             "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>Peter <b>Chalmers</b> &amp; family</p></div>'},
    "contained": [{"resourceType": "Organization", "id": "org1", "name": "Good Health Clinic"}],
    "identifier": [{"use": "usual", "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
    "active": True,
    "name": [{"id": "n1", "family": "Chalmers", "given": ["Peter", None, "James"],
              "_given": [None, {"id": "g2", "extension": [{"url": "http://example.org/nickname",
                                                           "valueBoolean": False}]}, None]}],
    "gender": "male",
    "birthDate": "1974-12-25",
    "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                  "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
    "deceasedBoolean": False,
    "multipleBirthInteger": 2,
    "managingOrganization": {"reference": "#org1"},
}


def test_spec_style_patient_reads_as_its_json() -> None:
    assert from_xml(PATIENT_XML) == PATIENT_JSON
    assert from_xml(to_xml(PATIENT_JSON)) == PATIENT_JSON


def test_elements_are_written_in_definition_order() -> None:
    shuffled = {k: v for k, v in reversed(list(PATIENT_JSON.items())) if k not in ("contained", "text")}
    text = to_xml(shuffled).decode()
    order = [text.index(f"<{name}") for name in ("id", "identifier", "active", "name",
                                                  "gender", "birthDate", "deceasedBoolean", "managingOrganization")]
    assert order == sorted(order)
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?><Patient xmlns="http://hl7.org/fhir">')


def test_numbers_and_decimals() -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "valueQuantity": {"value": 5.25, "unit": "mg"}, "component": [
               {"code": {"text": "n"}, "valueInteger": 3}, {"code": {"text": "d"}, "valueQuantity": {"value": 7}}]}
    assert from_xml(to_xml(obs)) == obs


@pytest.mark.parametrize("path", sorted(SAMPLES.rglob("*.json"))[:4], ids=lambda p: p.name[:20])
def test_synthea_bundles_round_trip(path: Path) -> None:
    bundle = orjson.loads(path.read_bytes())
    assert from_xml(to_xml(bundle)) == bundle


@pytest.mark.parametrize(("xml", "where"), [
    (b'<Patient xmlns="http://hl7.org/fhir"><foo value="1"/></Patient>', "Patient.foo"),
    (b'<Patient xmlns="http://hl7.org/fhir"><active value="yes"/></Patient>', "Patient.active"),
    (b'<Patient xmlns="http://hl7.org/fhir"><gender value="male"/><gender value="female"/></Patient>',
     "Patient.gender"),
    (b'<Patient xmlns="http://hl7.org/fhir"><multipleBirthInteger value="two"/></Patient>',
     "Patient.multipleBirthInteger"),
    (b'<Patient><active value="true"/></Patient>', "Patient"),  # not in the FHIR namespace
    (b'<Nonsense xmlns="http://hl7.org/fhir"/>', "Nonsense"),
])
def test_bad_xml_names_the_element(xml: bytes, where: str) -> None:
    with pytest.raises(XmlError) as caught:
        from_xml(xml)
    assert caught.value.path == where


def test_entities_and_dtds_are_refused() -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
            b'<Patient xmlns="http://hl7.org/fhir"><id value="&b;"/></Patient>')
    xxe = (b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b'<Patient xmlns="http://hl7.org/fhir"><id value="&x;"/></Patient>')
    for doc in (bomb, xxe, b"<Patient xmlns='http://hl7.org/fhir'>", b"not xml"):
        with pytest.raises(XmlError):
            from_xml(doc)


def _spec_examples() -> list[Path]:
    """One example of each resource type from the R4 specification (scripts/test.sh fetches the package)."""
    folder = os.environ.get("FHIR_TEST_R4_EXAMPLES")
    if not folder:
        return []
    first: dict[str, Path] = {}
    for path in sorted(Path(folder).glob("*.json")):
        kind = path.name.split("-", 1)[0]
        if kind[:1].isupper() and kind not in first:
            first[kind] = path
    return list(first.values())


def test_spec_examples_of_every_type_round_trip() -> None:
    examples = _spec_examples()
    if not examples:
        if os.environ.get("CI"):
            pytest.fail("FHIR_TEST_R4_EXAMPLES is not set (scripts/test.sh fetches hl7.fhir.r4.examples)")
        pytest.skip("FHIR_TEST_R4_EXAMPLES is not set (scripts/test.sh fetches hl7.fhir.r4.examples)")
    failed = []
    for path in examples:
        resource = orjson.loads(path.read_bytes())
        if not equivalent(resource, from_xml(to_xml(resource))):
            failed.append(path.name)
    assert len(examples) >= 140 and failed == []
