"""Golden files: each tests/golden/hl7v2/<event>/<case>.hl7 maps to the Bundle in <case>.json.

Deep-equal after removing run-dependent fields (Provenance.recorded), plus rule checks on every bundle:
references resolve inside the bundle (or are conditional), every resource validates as R4, ids are stable.
Cases under errors/ expect the ERR details of an AE, under rejected/ those of an AR; a mapped case with
warnings (ERR severity W: Z-segments, values left out) lists them under "warnings" beside the entries.
Regenerate after a deliberate mapping change with HL7_GOLDEN_UPDATE=1 and review the diff.
"""

from __future__ import annotations

import copy
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fhir_server.validation import validate_resource
from interfaces.mllp.pipeline import Hl7Pipeline
from mappings.hl7v2.errors import MappingError, RejectedMessage
from mappings.hl7v2.header import read_header
from mappings.hl7v2.mapper import V2Mapper
from mappings.hl7v2.message import MessageError, decode, parse

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "hl7v2"
CASES = sorted(GOLDEN.glob("*/*.hl7"))
RECEIVED = datetime(2024, 3, 5, 5, 0, tzinfo=UTC)
UPDATE = os.environ.get("HL7_GOLDEN_UPDATE") == "1"
MAPPER = V2Mapper(identifier_systems={"HOSP^MR": "https://hospital.example.org/fhir/sid/mrn",
                                      "HOSP^VN": "https://hospital.example.org/fhir/sid/visit"})


def _outcome(path: Path) -> Any:
    raw = path.read_bytes()
    try:
        msg = parse(decode(raw))
    except MessageError as exc:
        return {"rejected": [str(exc)]}
    header = read_header(msg)
    if not header.version_supported():
        return {"rejected": [f"Unsupported version {header.version}"]}
    try:
        result = MAPPER.map(msg, header, RECEIVED)
    except RejectedMessage as exc:
        return {"rejected": [exc.detail.describe()]}
    except MappingError as exc:
        return {"errors": [d.describe() for d in exc.details]}
    if result.warnings:  # what was not mapped (W in the AA): part of the expected outcome
        return {**result.bundle, "warnings": [w.describe() for w in result.warnings]}
    return result.bundle


def _strip(bundle: Any) -> Any:
    """Remove run-dependent fields (none are left but the Provenance's recorded time)."""
    if isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle":
        for entry in bundle["entry"]:
            entry["resource"].pop("recorded", None) if entry["resource"]["resourceType"] == "Provenance" else None
    return bundle


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_golden(path: Path) -> None:
    outcome = _outcome(path)
    actual = _strip(copy.deepcopy(outcome))
    expected_path = path.with_suffix(".json")
    if UPDATE or not expected_path.exists():
        expected_path.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n", "utf-8")
    expected = _strip(json.loads(expected_path.read_text("utf-8")))
    assert actual == expected
    if path.parent.name == "errors":
        assert "errors" in actual
    elif path.parent.name == "rejected":
        assert "rejected" in actual
    else:
        assert actual.get("resourceType") == "Bundle", actual
        _check_rules(outcome)


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        refs = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return refs + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


def _check_rules(bundle: dict[str, Any]) -> None:
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    assert len(full_urls) == len(bundle["entry"]), "fullUrls are unique"
    for entry in bundle["entry"]:
        resource = entry["resource"]
        for ref in _references(resource):
            assert ref in full_urls or "?" in ref, f"{ref} does not resolve inside the bundle"
        issues = validate_resource(resource)
        assert not issues, [(i.expression, i.diagnostics) for i in issues]
        request = entry["request"]
        if request["method"] == "PUT" and "?" not in request["url"]:
            assert request["url"] == f"{resource['resourceType']}/{resource['id']}"
            assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
        if "ifNoneExist" in request or "?" in request["url"]:
            assert "identifier=" in (request.get("ifNoneExist") or request["url"])


def test_ids_are_stable_across_runs_and_differ_between_senders() -> None:
    path = GOLDEN / "ORU_R01" / "lab_panel_all_value_types.hl7"
    raw = path.read_bytes()
    first = _outcome(path)
    again = V2Mapper().map(parse(decode(raw)), read_header(parse(decode(raw))), datetime.now(UTC)).bundle
    assert [e["fullUrl"] for e in first["entry"]][1:] == [e["fullUrl"] for e in again["entry"]][1:]
    other = raw.replace(b"|ANALYZER|CITYLAB|", b"|ANALYZER2|CITYLAB|")
    moved = V2Mapper().map(parse(decode(other)), read_header(parse(decode(other))), RECEIVED).bundle
    obs = [e["fullUrl"] for e in first["entry"] if e["resource"]["resourceType"] == "Observation"]
    obs2 = [e["fullUrl"] for e in moved["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert not set(obs) & set(obs2)


def test_a_correction_maps_to_the_same_observation_id() -> None:
    final = GOLDEN / "ORU_R01" / "v23_latin1_correction.hl7"
    text = decode(final.read_bytes())
    as_final = text.replace("|||||||||||||||||||C", "|||||||||||||||||||F").replace("||||C|||", "||||F|||")
    ids = []
    for body in (text, as_final):
        msg = parse(body)
        bundle = MAPPER.map(msg, read_header(msg), RECEIVED).bundle
        obs = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
        ids.append((obs[0]["id"], obs[0]["status"]))
    assert ids[0][0] == ids[1][0]
    assert [s for _, s in ids] == ["corrected", "final"]


def test_pipeline_is_importable() -> None:
    assert Hl7Pipeline


def test_message_templates_name_real_structures_and_every_event_has_a_golden_case() -> None:
    from mappings.hl7v2.header import known_structures

    structures = known_structures("2.5")
    covered = {p.parent.name.replace("_", "^") for p in CASES}
    for name, template in MAPPER.messages.items():
        assert template["structure"] in structures, name  # hl7apy's reference library knows it
        assert any(event in covered for event in template["events"]), f"{name} has no golden case"
