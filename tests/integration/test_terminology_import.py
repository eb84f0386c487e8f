"""LOINC, ICD-10 (ClaML) and SNOMED CT (RF2) importers on tiny fixture releases, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fhir_server.errors import FhirError
from terminology.core import load_core
from terminology.importers import icd10, loinc, snomed, store
from tests.conftest import SYSTEM
from tests.integration.test_terminology_operations import issue, params, props

FIXTURES = Path(__file__).parent.parent / "fixtures" / "terminology"
SCT = "http://snomed.info/sct"


def lookup(api, system: str, code: str):  # type: ignore[no-untyped-def]
    return api.http.get("CodeSystem/$lookup", params={"system": system, "code": code})


def subsumes(api, system: str, a: str, b: str) -> str:  # type: ignore[no-untyped-def]
    r = api.http.get("CodeSystem/$subsumes", params={"system": system, "codeA": a, "codeB": b})
    assert r.status_code == 200, r.text
    return str(params(r.json())["outcome"][0]["valueCode"])


def expand(api, system: str, flt: dict[str, str], text: str | None = None) -> list[str]:  # type: ignore[no-untyped-def]
    body = {"resourceType": "Parameters", "parameter": [{"name": "valueSet", "resource": {
        "resourceType": "ValueSet", "status": "active", "compose": {"include": [{"system": system,
                                                                                 "filter": [flt]}]}}}]}
    if text:
        body["parameter"].append({"name": "filter", "valueString": text})
    r = api.http.post("ValueSet/$expand", json=body)
    assert r.status_code == 200, r.text
    return [c["code"] for c in r.json()["expansion"].get("contains", [])]


def test_loinc_import_codes_properties_and_part_hierarchy(api) -> None:  # type: ignore[no-untyped-def]
    assert store(api.fhir, loinc.read(str(FIXTURES / "loinc")), access=SYSTEM) == 11
    r = lookup(api, "http://loinc.org", "2345-7")
    assert r.status_code == 200, r.text
    p = params(r.json())
    assert p["display"][0]["valueString"] == "Glucose [Mass/volume] in Serum or Plasma"
    assert p["version"][0]["valueString"] == "2.77"
    pr = props(r.json())
    assert pr["COMPONENT"] == ["Glucose"] and pr["SCALE_TYP"] == ["Qn"] and pr["parent"] == ["LP14635-4"]
    assert subsumes(api, "http://loinc.org", "LP7786-9", "2339-0") == "subsumes"
    glucose = expand(api, "http://loinc.org", {"property": "concept", "op": "descendent-of", "value": "LP7786-9"})
    assert glucose == ["2345-7", "2339-0", "15074-8", "LP14635-4"]
    assert expand(api, "http://loinc.org", {"property": "STATUS", "op": "=", "value": "DEPRECATED"}) == ["15074-8"]
    assert expand(api, "http://loinc.org", {"property": "CLASS", "op": "=", "value": "CHEM"}, "serum") == ["2345-7"]
    cs = api.http.get("CodeSystem/loinc").json()
    assert cs["content"] == "not-present" and cs["count"] == 11


def test_icd10_claml_import(api) -> None:  # type: ignore[no-untyped-def]
    assert store(api.fhir, icd10.read(str(FIXTURES / "icd10" / "icd10-claml.xml")), access=SYSTEM) == 8
    system = "http://hl7.org/fhir/sid/icd-10"
    p = params(lookup(api, system, "A00.0").json())
    assert p["display"][0]["valueString"] == "Cholera due to Vibrio cholerae 01, biovar cholerae"
    assert p["version"][0]["valueString"] == "2019"
    assert subsumes(api, system, "I", "A00.1") == "subsumes"
    assert subsumes(api, system, "II", "A00") == "not-subsumed"
    assert expand(api, system, {"property": "kind", "op": "=", "value": "chapter"}) == ["I", "II"]
    r = api.http.get("CodeSystem/$validate-code", params={"url": system, "code": "A00.9"})
    assert params(r.json())["result"][0]["valueBoolean"] is False


def test_snomed_rf2_import_preferred_terms_and_active_is_a(api) -> None:  # type: ignore[no-untyped-def]
    assert load_core(api.fhir, [SCT], access=SYSTEM).loaded == 1  # the core's content: not-present stub of SNOMED CT
    stub = api.http.post("ValueSet/$expand", json={"resourceType": "Parameters", "parameter": [{
        "name": "valueSet", "resource": {"resourceType": "ValueSet", "status": "active",
                                         "compose": {"include": [{"system": SCT}]}}}]})
    assert stub.status_code == 422 and "import it" in issue(stub)["diagnostics"]
    imported = snomed.read(str(FIXTURES / "snomed"))
    assert imported.version == "http://snomed.info/sct/900000000000207008/version/20240101"
    assert store(api.fhir, imported, access=SYSTEM) == 9
    p = params(lookup(api, SCT, "22298006").json())
    assert p["display"][0]["valueString"] == "Myocardial infarction"  # the en-US preferred synonym
    fsn = [d["part"][-1]["valueString"] for d in p["designation"]]
    assert fsn == ["Myocardial infarction (disorder)"]
    assert params(lookup(api, SCT, "64572001").json())["display"][0]["valueString"] == "Disease"
    assert lookup(api, SCT, "190268003").status_code == 404  # inactive concept
    assert subsumes(api, SCT, "404684003", "46635009") == "subsumes"
    assert subsumes(api, SCT, "73211009", "22298006") == "not-subsumed"  # that is-a is inactive
    assert expand(api, SCT, {"property": "concept", "op": "is-a", "value": "73211009"}) == [
        "44054006", "46635009", "73211009"]


def test_cli_import_and_its_errors(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "FHIR_DATABASE_URL": api.backend.settings.database_url, "FHIR_OUTBOX_DISPATCHER": "false"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fhir_server.cli", "terminology", "import", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    first = run("icd10", str(FIXTURES / "icd10"))
    assert first.returncode == 0, first.stderr
    assert "concepts\t8" in first.stdout
    assert lookup(api, "http://hl7.org/fhir/sid/icd-10", "A01").status_code == 200
    missing = run("loinc", str(tmp_path))
    assert missing.returncode == 1 and "Loinc.csv" in missing.stderr


def test_import_again_replaces_the_earlier_one(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    system = "http://hl7.org/fhir/sid/icd-10"
    store(api.fhir, icd10.read(str(FIXTURES / "icd10")), access=SYSTEM)
    smaller = tmp_path / "icd.xml"
    smaller.write_text((FIXTURES / "icd10" / "icd10-claml.xml").read_text().replace('code="A01"', 'code="A02"'))
    assert store(api.fhir, icd10.read(str(smaller)), access=SYSTEM) == 8
    assert lookup(api, system, "A01").status_code == 404
    assert lookup(api, system, "A02").status_code == 200
    assert subsumes(api, system, "A00-A09", "A02") == "subsumes"
    assert api.http.get("CodeSystem/icd-10").json()["meta"]["versionId"] == "2"
    broken = tmp_path / "broken.xml"
    broken.write_text("<ClaML><Class code='A00'>")
    with pytest.raises(FhirError, match="not well-formed"):
        icd10.read(str(broken))
    r = lookup(api, system, "nope")
    assert r.status_code == 404 and issue(r)["expression"] == ["code"]
