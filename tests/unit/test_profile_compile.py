"""Compiled StructureDefinitions, value matching and slice selection (no database)."""

from __future__ import annotations

from fhir_server.validation.matching import codings, contains, equal, reference_type, values_at
from fhir_server.validation.profile import ElementDef, Slicing, TypeRef, compile_profile
from fhir_server.validation.service import StoreDefinitions, compiled, core_profile
from fhir_server.validation.slicing import slice_of
from fhir_server.validation.walker import Item, Walker
from tests.integration import validate_profiles as tp


def test_tree_follows_ids_and_marks_what_the_profile_changes() -> None:
    profile = compiled(tp.patient_profile(), "unit")
    assert profile is not None and profile.type == "Patient"
    identifier = profile.root.children["identifier"]
    assert identifier.min == 1 and identifier.slicing is not None
    (mrn,) = identifier.slices
    assert mrn.slice_name == "mrn" and mrn.children["system"].fixed == tp.MRN
    assert identifier.relevant and mrn.relevant and profile.root.children["name"].relevant
    assert not profile.root.children["contact"].relevant  # as in the core: the base pass covers it
    assert not profile.root.children["telecom"].relevant


def test_core_definitions_choice_and_content_reference() -> None:
    obs = core_profile("Observation")
    assert obs is not None and obs.root.children["value[x]"].choice
    assert {"Quantity", "string", "Period"} <= obs.root.children["value[x]"].type_codes
    questionnaire = core_profile("Questionnaire")
    assert questionnaire is not None
    assert questionnaire.root.children["item"].children["item"].content_ref == "#Questionnaire.item"
    assert compile_profile({"url": "x", "type": "Patient", "snapshot": {"element": [
        {"id": "Patient", "path": "Patient", "min": 0, "max": "*"}]}}).root.children == {}


def test_fixed_is_exact_and_pattern_is_contained() -> None:
    pattern = {"coding": [{"system": "s", "code": "c"}]}
    instance = {"coding": [{"system": "o", "code": "x"}, {"system": "s", "code": "c", "display": "C"}], "text": "t"}
    assert contains(instance, pattern) and not equal(instance, pattern)
    assert not contains({"coding": [{"system": "s", "code": "d"}]}, pattern)
    assert equal(1, 1.0) and not equal(True, 1) and not contains("a", ["a", "b"])
    assert values_at({"code": {"coding": [{"code": "a"}, {"code": "b"}]}}, ["code", "coding", "code"]) == ["a", "b"]
    assert values_at({"valueQuantity": {"value": 3}}, ["value", "value"]) == [3]


def test_reference_types_and_codings() -> None:
    local = {"urn:uuid:1": "Patient"}
    assert reference_type("Patient/1", {}) == "Patient"
    assert reference_type("https://x.org/fhir/Encounter/9/_history/2", {}) == "Encounter"
    assert reference_type("urn:uuid:1", local) == "Patient"
    assert reference_type("Nope/1", {}) is None and reference_type("#c1", {}) is None
    concept = {"coding": [{"system": "s", "code": "c"}, {"display": "no code"}]}
    assert codings(concept, "CodeableConcept") == [("s", "c")]
    assert codings("male", "code") == [(None, "male")] and codings({"value": 1}, "Quantity") is None


def _sliced(discriminators: tuple[tuple[str, str], ...], *slices: ElementDef) -> ElementDef:
    base = ElementDef("X.part", "X.part", "part", 0, None, (TypeRef("BackboneElement"),),
                      slicing=Slicing(discriminators, "closed", False))
    base.slices.extend(slices)
    return base


def _slice(name: str, **children: ElementDef) -> ElementDef:
    s = ElementDef(f"X.part:{name}", "X.part", "part", 0, None, (TypeRef("BackboneElement"),), slice_name=name)
    s.children.update(children)
    return s


def _child(name: str, *, fixed: object = None, kind: str | None = None, min_: int = 0, max_: int | None = None,
           types: tuple[str, ...] = ()) -> ElementDef:
    return ElementDef(f"X.part.{name}", f"X.part.{name}", name, min_, max_, tuple(TypeRef(t) for t in types),
                      fixed=fixed, fixed_kind=kind)


def test_slice_selection_by_each_discriminator_kind() -> None:
    defs = StoreDefinitions(None)
    a = _slice("a", code=_child("code", fixed={"coding": [{"code": "A"}]}, kind="pattern"))
    b = _slice("b", code=_child("code", fixed={"coding": [{"code": "B"}]}, kind="pattern"))
    by_pattern = _sliced((("pattern", "code"),), a, b)
    item = Item({"code": {"coding": [{"system": "s", "code": "B"}]}}, "X.part[0]", None)
    assert slice_of(defs, by_pattern, item) is b
    assert slice_of(defs, _sliced((("value", "code.coding.code"),), a, b), item) is b  # inside the pattern
    assert slice_of(defs, by_pattern, Item({"code": {"text": "?"}}, "X.part[0]", None)) is None
    present = _slice("present", flag=_child("flag", min_=1))
    absent = _slice("absent", flag=_child("flag", max_=0))
    by_exists = _sliced((("exists", "flag"),), present, absent)
    assert slice_of(defs, by_exists, Item({"other": 1}, "p", None)) is absent
    assert slice_of(defs, by_exists, Item({"flag": True}, "p", None)) is present
    quantity = ElementDef("X.v:q", "X.v", "v[x]", 0, 1, (TypeRef("Quantity"),), slice_name="q")
    text = ElementDef("X.v:s", "X.v", "v[x]", 0, 1, (TypeRef("string"),), slice_name="s")
    by_type = _sliced((("type", "$this"),), quantity, text)
    assert slice_of(defs, by_type, Item("x", "X.v.ofType(string)", "string")) is text


def test_extension_slices_by_url_of_their_profile() -> None:
    walker = Walker(StoreDefinitions(None))
    profile = compiled(tp.patient_profile(), "unit")
    assert profile is not None
    ext = profile.root.children["extension"]
    url = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
    assert slice_of(walker.defs, ext, Item({"url": url, "valueAddress": {"city": "x"}}, "e", "Extension")) is \
        ext.slices[0]
    assert slice_of(walker.defs, ext, Item({"url": "http://other", "valueString": "x"}, "e", "Extension")) is None


def test_ordered_and_open_at_end_slicing() -> None:
    a = _slice("a", code=_child("code", fixed="A", kind="fixed"))
    b = _slice("b", code=_child("code", fixed="B", kind="fixed"))
    items = [Item({"code": c}, f"X.part[{i}]", None) for i, c in enumerate(["B", "A", "Z"])]
    for rules, ordered, expected in (("open", False, []), ("open", True, ["X.part[1]"]),
                                     ("openAtEnd", False, [])):  # openAtEnd alone does not order the slices
        sliced = _sliced((("value", "code"),), a, b)
        sliced.slicing = Slicing((("value", "code"),), rules, ordered)
        walker = Walker(StoreDefinitions(None))
        walker._slices(sliced, items, {})
        assert [i.expression[0] for i in walker.out] == expected, (rules, ordered)
    sliced.slicing = Slicing((("value", "code"),), "openAtEnd", False)
    walker = Walker(StoreDefinitions(None))
    walker._slices(sliced, [items[2], items[0]], {})  # an unsliced item before a slice
    assert [i.expression[0] for i in walker.out] == ["X.part[0]"]


def test_extension_and_of_type_discriminator_paths() -> None:
    defs = StoreDefinitions(None)
    url = "http://example.org/fhir/StructureDefinition/kind"

    def by_kind(name: str, code: str) -> ElementDef:
        ext = ElementDef("X.part.extension", "X.part.extension", "extension", 0, None, (TypeRef("Extension"),),
                         slicing=Slicing((("value", "url"),), "open", False))
        kind = ElementDef(f"X.part:{name}.extension:kind", "X.part.extension", "extension", 1, 1,
                          (TypeRef("Extension", (url,)),), slice_name="kind")
        kind.children["value[x]"] = ElementDef("X.part.extension.value[x]", "X.part.extension.value[x]", "value[x]",
                                               0, 1, (TypeRef("code"),), fixed=code, fixed_kind="fixed")
        ext.slices.append(kind)
        return _slice(name, extension=ext)

    a, b = by_kind("a", "A"), by_kind("b", "B")
    sliced = _sliced((("value", f"extension('{url}').value"),), a, b)
    item = Item({"extension": [{"url": "http://other", "valueCode": "A"}, {"url": url, "valueCode": "B"}]}, "p", None)
    assert slice_of(defs, sliced, item) is b
    assert slice_of(defs, sliced, Item({"extension": [{"url": "http://other", "valueCode": "B"}]}, "p", None)) is None
    # ofType(): only the value of that type counts
    q = _slice("q", value=_child("value[x]", fixed={"code": "mm[Hg]"}, kind="pattern", types=("Quantity",)))
    by_unit = _sliced((("pattern", "value.ofType(Quantity)"),), q)
    assert slice_of(defs, by_unit, Item({"valueQuantity": {"value": 1, "code": "mm[Hg]"}}, "p", None)) is q
    assert slice_of(defs, by_unit, Item({"valueCodeableConcept": {"code": "mm[Hg]"}}, "p", None)) is None
    # a type discriminator on a choice element: the JSON key tells the type
    s = _slice("s", value=_child("value[x]", types=("string",)))
    assert slice_of(defs, _sliced((("type", "value"),), q, s), Item({"valueString": "x"}, "p", None)) is s


def _resliced_patient() -> dict[str, object]:
    from fhir_server.definitions import resource_structure_definitions, type_structure_definitions
    from fhir_server.packages.snapshot import generate

    value = {"type": "value", "path": "system"}
    sd = {"resourceType": "StructureDefinition", "url": "http://example.org/fhir/StructureDefinition/resliced",
          "type": "Patient", "kind": "resource", "derivation": "constraint",
          "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient", "differential": {"element": [
              {"id": "Patient.identifier", "path": "Patient.identifier",
               "slicing": {"discriminator": [value], "rules": "open"}},
              {"id": "Patient.identifier:mrn", "path": "Patient.identifier", "sliceName": "mrn", "min": 1,
               "slicing": {"discriminator": [{"type": "value", "path": "use"}], "rules": "open"}},
              {"id": "Patient.identifier:mrn.system", "path": "Patient.identifier.system", "fixedUri": tp.MRN},
              {"id": "Patient.identifier:mrn/official", "path": "Patient.identifier", "sliceName": "mrn/official",
               "min": 1, "max": "1"},
              {"id": "Patient.identifier:mrn/official.use", "path": "Patient.identifier.use", "fixedCode": "official"},
          ]}}
    base = resource_structure_definitions()["Patient"]
    sd["snapshot"] = {"element": generate(sd, base, type_structure_definitions().get)}
    return sd


def test_reslices_are_generated_compiled_and_checked() -> None:
    sd = _resliced_patient()
    ids = [e["id"] for e in sd["snapshot"]["element"]]  # type: ignore[index]
    assert ids.index("Patient.identifier:mrn") < ids.index("Patient.identifier:mrn/official") < \
        ids.index("Patient.identifier:mrn/official.use") < ids.index("Patient.active")
    official = next(e for e in sd["snapshot"]["element"] if e["id"] == "Patient.identifier:mrn/official.system")  # type: ignore[index]
    assert official["fixedUri"] == tp.MRN  # copied from slice mrn
    profile = compiled(sd, "unit")
    assert profile is not None
    (mrn,) = profile.root.children["identifier"].slices
    assert [s.slice_name for s in mrn.slices] == ["mrn/official"]

    def errors(identifiers: list[dict[str, str]]) -> list[str]:
        walker = Walker(StoreDefinitions(None))
        res = {"resourceType": "Patient", "identifier": identifiers}
        walker.element(profile.root, Item(res, "Patient", "Patient"), res, base=False)
        return [i.diagnostics for i in walker.out if i.severity == "error"]

    assert errors([{"system": tp.MRN, "value": "1", "use": "official"}, {"system": tp.MRN, "value": "2"}]) == []
    (missing,) = errors([{"system": tp.MRN, "value": "1", "use": "usual"}, {"system": "urn:other", "value": "2"}])
    assert "the slice 'mrn/official' of Patient.identifier:mrn needs at least 1 element(s), found 0" in missing
    assert any("'mrn/official'" in e and "at most 1" in e for e in errors(
        [{"system": tp.MRN, "value": "1", "use": "official"}, {"system": tp.MRN, "value": "2", "use": "official"}]))


def test_unknown_extension_is_an_error_where_the_profile_closes_extensions() -> None:
    sd = tp.patient_profile()
    for el in sd["snapshot"]["element"]:
        if el["id"] == "Patient.extension":
            el["slicing"]["rules"] = "closed"
    profile = compiled({**sd, "url": sd["url"] + "-closed"}, "unit")
    assert profile is not None
    res = {"resourceType": "Patient", "extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": {"city": "Pune"}},
        {"url": "http://example.org/unknown", "valueString": "x"}]}
    walker = Walker(StoreDefinitions(None))
    walker.element(profile.root, Item(res, "Patient", "Patient"), res, base=False)
    assert [(i.expression[0], "closed" in i.diagnostics) for i in walker.out
            if i.severity == "error" and "extension" in i.expression[0]] == [("Patient.extension[1]", True)]


def test_choice_element_renamed_by_type_in_a_differential_is_its_type_slice() -> None:
    from fhir_server.definitions import resource_structure_definitions, type_structure_definitions
    from fhir_server.packages.snapshot import generate

    ucum = "http://unitsofmeasure.org"
    sd: dict[str, object] = {
        "url": "http://example.org/fhir/StructureDefinition/renamed", "type": "Observation", "kind": "resource",
        "differential": {"element": [
            {"id": "Observation.valueQuantity", "path": "Observation.valueQuantity", "min": 1},
            {"id": "Observation.valueQuantity.system", "path": "Observation.valueQuantity.system", "fixedUri": ucum}]}}
    sd["snapshot"] = {"element": generate(sd, resource_structure_definitions()["Observation"],
                                          type_structure_definitions().get)}
    profile = compiled(sd, "unit")
    assert profile is not None
    (quantity,) = profile.root.children["value[x]"].slices
    assert quantity.slice_name == "valueQuantity" and quantity.type_codes == {"Quantity"}

    def errors(**value: object) -> dict[str, str]:
        walker = Walker(StoreDefinitions(None))
        res = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **value}
        walker.element(profile.root, Item(res, "Observation", "Observation"), res, base=False)
        return {i.expression[0]: i.diagnostics for i in walker.out if i.severity == "error"}

    assert errors(valueQuantity={"value": 1, "system": ucum, "code": "kg"}) == {}
    assert ucum in errors(valueQuantity={"value": 1, "system": "http://other"})["Observation.value.ofType(Quantity).system"]
    assert "the slice 'valueQuantity'" in errors(valueString="heavy")["Observation.value"]


def test_content_reference_constrained_below_in_a_differential() -> None:
    from fhir_server.definitions import resource_structure_definitions, type_structure_definitions
    from fhir_server.packages.snapshot import generate

    sd: dict[str, object] = {
        "url": "http://example.org/fhir/StructureDefinition/nested-texts", "type": "Questionnaire",
        "kind": "resource", "differential": {"element": [
            {"id": "Questionnaire.item.item.text", "path": "Questionnaire.item.item.text", "min": 1}]}}
    sd["snapshot"] = {"element": generate(sd, resource_structure_definitions()["Questionnaire"],
                                          type_structure_definitions().get)}
    nested = {e["id"]: e for e in sd["snapshot"]["element"]}  # type: ignore[index]
    assert "contentReference" not in nested["Questionnaire.item.item"]
    assert nested["Questionnaire.item.item.text"]["min"] == 1
    assert nested["Questionnaire.item.item.item"]["contentReference"] == "#Questionnaire.item"  # one level only
    profile = compiled(sd, "unit")
    assert profile is not None

    def errors(item: dict[str, object]) -> dict[str, str]:
        walker = Walker(StoreDefinitions(None))
        res = {"resourceType": "Questionnaire", "status": "draft",
               "item": [{"linkId": "1", "type": "group", "item": [item]}]}
        walker.element(profile.root, Item(res, "Questionnaire", "Questionnaire"), res, base=False)
        return {i.expression[0]: i.diagnostics for i in walker.out if i.severity == "error"}

    assert errors({"linkId": "1.1", "type": "string", "text": "Name?"}) == {}
    found = errors({"linkId": "1.1", "type": "string"})
    assert "minimum cardinality of text" in found["Questionnaire.item[0].item[0].text"]
