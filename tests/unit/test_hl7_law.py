"""Which order a specimen-centric result reports on (mappings/hl7v2/law.py), with the server's answers given as
data: the keys' order (barcode, placer, filler, test code), narrowing, and the AE naming the field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mappings.hl7v2.errors import MappingError
from mappings.hl7v2.header import read_header
from mappings.hl7v2.law import Candidate, Found
from mappings.hl7v2.mapper import V2Mapper
from mappings.hl7v2.message import parse


class Answers:
    """What the server holds: orders by barcode, by identifier token, by id."""

    def __init__(self, barcodes: dict[str, list[str]], identifiers: dict[str, list[str]],
                 codes: dict[str, str] | None = None) -> None:
        self.barcodes, self.identifiers, self.codes = barcodes, identifiers, codes or {}
        self.asked: list[str] = []

    def _found(self, refs: list[str]) -> Found:
        return {r: Candidate("Patient/p", frozenset([self.codes.get(r, "2345-7")])) for r in refs}

    def orders_for_barcode(self, barcode: str) -> Found:
        self.asked.append(f"barcode {barcode}")
        return self._found(self.barcodes.get(barcode, []))

    def orders_with_identifier(self, token: str) -> Found:
        self.asked.append(f"identifier {token}")
        return self._found(self.identifiers.get(token, []))

    def order(self, order_id: str) -> Found:
        return self._found([f"ServiceRequest/{order_id}"])

    def specimen_of(self, order: str, barcodes: tuple[str, ...]) -> tuple[str, dict[str, Any]] | None:
        return None


PLACER = "urn:fhir-server:hl7v2:authority:HIS|P-1"
FILLER = "urn:fhir-server:hl7v2:authority:LAB|F-1"


def _based_on(answers: Answers, obr: str = "OBR|1|P-1^HIS|F-1^LAB|2345-7^Glucose^LN") -> str:
    text = "\r".join(["MSH|^~\\&|AN|LAB|LIS|HOSP|20240305||OUL^R22^OUL_R22|C1|P|2.5.1",
                      "SPM|1|TUBE-1||SER|||||||P", "SAC|||TUBE-2", obr,
                      "OBX|1|NM|2345-7^Glucose^LN||90|mg/dL|||||F"]) + "\r"
    msg = parse(text)
    bundle = V2Mapper(resolver=answers).map(msg, read_header(msg), datetime.now(UTC)).bundle
    [obs] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert obs["subject"] == {"reference": "Patient/p"}  # the order's patient: the message has no PID
    return str(obs["basedOn"][0]["reference"])


def test_the_barcode_decides_first_and_alone_when_it_names_one_order() -> None:
    answers = Answers({"TUBE-2": ["ServiceRequest/a"]}, {PLACER: ["ServiceRequest/b"]})
    assert _based_on(answers) == "ServiceRequest/a"
    assert answers.asked == ["barcode TUBE-1", "barcode TUBE-2"]  # SPM-2 and SAC-3; no number was needed


def test_several_orders_of_a_tube_are_narrowed_by_placer_then_filler_then_test_code() -> None:
    tube = ["ServiceRequest/a", "ServiceRequest/b", "ServiceRequest/c"]
    answers = Answers({"TUBE-1": tube}, {PLACER: tube[:2], FILLER: ["ServiceRequest/b"]})
    assert _based_on(answers) == "ServiceRequest/b"
    by_code = Answers({"TUBE-1": tube[:2]}, {}, {"ServiceRequest/a": "2951-2"})
    assert _based_on(by_code) == "ServiceRequest/b"


def test_no_barcode_match_falls_to_the_placer_number_and_its_ambiguity_names_obr_2() -> None:
    assert _based_on(Answers({}, {PLACER: ["ServiceRequest/x"]})) == "ServiceRequest/x"
    with pytest.raises(MappingError) as err:
        _based_on(Answers({}, {PLACER: ["ServiceRequest/x", "ServiceRequest/y"]},
                          {"ServiceRequest/x": "2345-7", "ServiceRequest/y": "2345-7"}))
    assert err.value.details[0].describe().startswith("OBR[1]-2: 2 orders match the placer number")


def test_our_own_placer_number_is_the_order_id() -> None:
    assert _based_on(Answers({}, {}), "OBR|1|abc-1^FHIR-SERVER||2345-7^Glucose^LN") == "ServiceRequest/abc-1"
