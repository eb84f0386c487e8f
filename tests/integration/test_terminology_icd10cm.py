"""ICD-10-CM tabular importer on a tiny fixture in the CMS XML layout, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fhir_server.errors import FhirError
from terminology.importers import icd10cm, store
from tests.conftest import SYSTEM
from tests.integration.test_terminology_import import expand, lookup, subsumes
from tests.integration.test_terminology_operations import params

FIXTURES = Path(__file__).parent.parent / "fixtures" / "terminology" / "icd10cm"
CM = "http://hl7.org/fhir/sid/icd-10-cm"


def test_read_builds_chapter_section_diag_hierarchy_and_seventh_characters() -> None:
    imp = icd10cm.read(str(FIXTURES))
    assert imp.url == CM and imp.version == "2025"
    assert imp.concepts["A00-B99"].parents == set()
    assert imp.concepts["A00-A09"].parents == {"A00-B99"}
    assert imp.concepts["A00"].parents == {"A00-A09"}
    assert imp.concepts["E11.65"].parents == {"E11.6"}
    assert imp.concepts["E11.65"].display == "Type 2 diabetes mellitus with hyperglycemia"
    # sevenChrDef on S06 reaches every leaf below it; short codes are padded with the placeholder X
    assert imp.concepts["S06.0X0A"].parents == {"S06.0X0"}
    assert imp.concepts["S06.9XXD"].display == "Unspecified intracranial injury, subsequent encounter"
    assert "S06.0XA" not in imp.concepts  # S06.0X is no leaf: only its leaf S06.0X0 takes the 7th character
    assert "A00.0A" not in imp.concepts  # no sevenChrDef in chapter 1
    assert len(imp.concepts) == 22


def test_import_lookup_subsumes_and_groupers(api) -> None:  # type: ignore[no-untyped-def]
    assert store(api.fhir, icd10cm.read(str(FIXTURES / "icd10cm_tabular_2025.xml")), access=SYSTEM) == 22
    p = params(lookup(api, CM, "E11.9").json())
    assert p["display"][0]["valueString"] == "Type 2 diabetes mellitus without complications"
    assert p["version"][0]["valueString"] == "2025"
    assert subsumes(api, CM, "E00-E89", "E11.65") == "subsumes"
    assert subsumes(api, CM, "S06", "S06.0X0A") == "subsumes"
    assert subsumes(api, CM, "A00", "E11") == "not-subsumed"
    assert expand(api, CM, {"property": "concept", "op": "descendent-of", "value": "E11"}) == [
        "E11.6", "E11.65", "E11.9"]
    assert expand(api, CM, {"property": "kind", "op": "=", "value": "chapter"}) == ["A00-B99", "E00-E89", "S00-T88"]
    vs = {"resourceType": "ValueSet", "status": "active", "compose": {"include": [{"system": CM}]}}
    grouper = api.http.post("ValueSet/$validate-code", json={"resourceType": "Parameters", "parameter": [
        {"name": "valueSet", "resource": vs}, {"name": "system", "valueUri": CM},
        {"name": "code", "valueCode": "A00-A09"}, {"name": "abstract", "valueBoolean": False}]})
    assert params(grouper.json())["result"][0]["valueBoolean"] is False  # a section is not a code


def test_cli_import_and_bad_files(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "FHIR_DATABASE_URL": api.backend.settings.database_url, "FHIR_OUTBOX_DISPATCHER": "false"}
    done = subprocess.run([sys.executable, "-m", "fhir_server.cli", "terminology", "import", "icd10cm",
                           str(FIXTURES)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "concepts\t22" in done.stdout and CM in done.stdout
    assert lookup(api, CM, "A00.9").status_code == 200
    wrong = tmp_path / "icd10cm_tabular_x.xml"
    wrong.write_text("<ClaML><Class code='A00'/></ClaML>")
    with pytest.raises(FhirError, match="not an ICD-10-CM tabular"):
        icd10cm.read(str(wrong))
    wrong.write_text("<ICD10CM.tabular><chapter>")
    with pytest.raises(FhirError, match="not well-formed"):
        icd10cm.read(str(wrong))
