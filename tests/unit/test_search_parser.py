"""The search parser: typed values, prefixes, escaping, modifiers, and 400s that name the parameter."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from fhir_server.errors import FhirError
from fhir_server.search.parser import (
    Criterion,
    HasCriterion,
    RangeValue,
    ReferenceValue,
    TokenValue,
    parse_query,
    split_raw,
    unescape,
)
from fhir_server.search.registry import core_registry

REG = core_registry()


def one(rtype: str, name: str, value: str) -> Criterion:
    q = parse_query(REG, rtype, [(name, value)])
    assert not q.unknown and len(q.criteria) == 1
    c = q.criteria[0]
    assert isinstance(c, Criterion)
    return c


def rejects(rtype: str, name: str, value: str) -> FhirError:
    with pytest.raises(FhirError) as err:
        parse_query(REG, rtype, [(name, value)])
    assert err.value.status == 400 and err.value.issues[0].expression == (name,)
    return err.value


def test_token_forms() -> None:
    assert one("Observation", "code", "1234-5").values == [TokenValue(None, "1234-5")]
    assert one("Observation", "code", "http://loinc.org|1234-5").values == [TokenValue("http://loinc.org", "1234-5")]
    assert one("Observation", "code", "|x").values == [TokenValue("", "x")]
    assert one("Observation", "code", "http://loinc.org|").values == [TokenValue("http://loinc.org", None)]
    assert one("Observation", "code", "a,b").values == [TokenValue(None, "a"), TokenValue(None, "b")]
    assert one("Patient", "identifier:of-type", "http://t|MR|7").values == [TokenValue("http://t", "MR|7")]
    assert one("Observation", "code:not", "x").modifier == "not"


def test_escaping() -> None:
    assert split_raw(r"a\,b,c", ",") == [r"a\,b", "c"]
    assert unescape(r"a\,b\|c\\") == "a,b|c\\"
    assert one("Patient", "name", r"Smith\,Jr").values == ["Smith,Jr"]
    assert one("Patient", "identifier", r"sys|a\|b").values == [TokenValue("sys", "a|b")]


def test_dates_and_prefixes() -> None:
    (v,) = one("Patient", "birthdate", "ge2013-01").values
    assert isinstance(v, RangeValue) and v.prefix == "ge"
    assert v.low == datetime(2013, 1, 1, tzinfo=UTC) and v.high.day == 31  # type: ignore[union-attr]
    (v,) = one("Observation", "date", "2013-01-14T10:00:00+02:00").values
    assert isinstance(v, RangeValue) and v.low == datetime(2013, 1, 14, 8, tzinfo=UTC)
    assert "not a valid date" in rejects("Patient", "birthdate", "2013-02-30").message
    assert "Unknown prefix" in rejects("Patient", "birthdate", "xx2013").message
    rejects("Patient", "birthdate", "yesterday")


def test_numbers_and_quantities() -> None:
    (v,) = one("RiskAssessment", "probability", "gt0.5").values
    assert isinstance(v, RangeValue) and v.prefix == "gt" and v.value == Decimal("0.5")
    (v,) = one("RiskAssessment", "probability", "100").values
    assert isinstance(v, RangeValue) and (v.low, v.high) == (Decimal("99.5"), Decimal("100.5"))
    (v,) = one("Observation", "value-quantity", "le5.4|http://unitsofmeasure.org|mg").values
    assert isinstance(v, RangeValue) and (v.prefix, v.system, v.code) == ("le", "http://unitsofmeasure.org", "mg")
    (v,) = one("Observation", "value-quantity", "5.4||mg").values
    assert isinstance(v, RangeValue) and (v.system, v.code) == (None, "mg")
    rejects("Observation", "value-quantity", "five")


def test_references() -> None:
    assert one("Observation", "subject", "Patient/1").values == [ReferenceValue("Patient", "1")]
    assert one("Observation", "subject", "1").values == [ReferenceValue(None, "1")]
    assert one("Observation", "subject:Patient", "1").values == [ReferenceValue("Patient", "1")]
    assert one("Observation", "subject", "http://x/fhir/Patient/1").values == [
        ReferenceValue("Patient", "1", "http://x/fhir/Patient/1")]
    q = parse_query(REG, "Observation", [("subject", "http://ours/fhir/Patient/1")], base_url="http://ours/fhir")
    assert q.criteria[0].values == [ReferenceValue("Patient", "1")]  # type: ignore[union-attr]
    assert one("Observation", "subject:identifier", "urn:mrn|7").values == [TokenValue("urn:mrn", "7")]
    rejects("Observation", "subject", "Nope/1")
    rejects("Observation", "subject:Medication", "1")  # not a target of subject
    rejects("Observation", "subject", "Patient/")


def test_modifiers_and_unknown() -> None:
    assert one("Patient", "name:exact", "Ann").modifier == "exact"
    assert one("Patient", "name:missing", "true").values == [True]
    rejects("Patient", "name:bogus", "x")
    rejects("Patient", "name:missing", "maybe")
    # terminology modifiers parse here and are expanded against the terminology tables later (search/terms.py)
    assert one("Observation", "code:in", "http://vs").values == ["http://vs"]
    assert one("Observation", "code:below", "http://loinc.org|LP1").values == [TokenValue("http://loinc.org", "LP1")]
    q = parse_query(REG, "Patient", [("nonsense", "1"), ("_count", "5"), ("_include:iterate", "Patient:link")])
    assert [n for n, _ in q.unknown] == ["nonsense"] and len(q.control) == 2 and not q.criteria


def test_chain_and_has() -> None:
    c = one("Observation", "subject:Patient.name", "peter")
    assert c.chain_types == ("Patient",) and c.chain[0].param.code == "name"
    c = one("Observation", "patient.birthdate", "ge2000")
    assert c.chain_types == ("Patient",)
    q = parse_query(REG, "Patient", [("_has:Observation:patient:code", "1234")])
    has = q.criteria[0]
    assert isinstance(has, HasCriterion) and has.source_type == "Observation" and has.ref_param == "patient"
    rejects("Patient", "_has:Observation:code:code", "1")  # code is not a reference
