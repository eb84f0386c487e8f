"""`fhir-server packages install` with the ABDM / NRCeS IG (ndhm.in 6.5.0), whose examples and official
samples must then validate against their meta.profile with no errors, on SQLite and PostgreSQL.

The IG lives in the team's shared folder beside the checkout; without it the tests skip, except under CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from fhir_server.packages.install import install, read_package
from tests.conftest import SYSTEM

IG = Path(__file__).resolve().parents[3] / "shared" / "india" / "ndhm.in-6.5.0"
SKIP = {"StructureDefinition", "ValueSet", "CodeSystem", "ImplementationGuide"}


@pytest.fixture(scope="module")
def ig() -> Path:
    if not (IG / "package" / "package.json").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"the ABDM IG is missing at {IG} (CI has ../shared beside the checkout)")
        pytest.skip(f"the ABDM IG is not at {IG}")
    return IG


def cli(api, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    env = {**os.environ, "FHIR_DATABASE_URL": api.backend.settings.database_url, "FHIR_OUTBOX_DISPATCHER": "false"}
    return subprocess.run([sys.executable, "-m", "fhir_server.cli", "packages", "install", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_install_folder_and_tarball_idempotent(api, ig: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = cli(api, str(ig / "package"))
    assert first.returncode == 0, first.stderr
    assert "package\tndhm.in#6.5.0" in first.stdout
    assert "StructureDefinition\tcreated 63\tupdated 0\tunchanged 0" in first.stdout
    assert "ValueSet\tcreated 48" in first.stdout and "CodeSystem\tcreated 20" in first.stdout
    sd = api.http.get("StructureDefinition", params={"url": "https://nrces.in/ndhm/fhir/r4/StructureDefinition/Patient"})
    assert sd.json()["total"] == 1
    # the same package as an npm tarball, one resource changed: only that one gets a new version
    tgz = tmp_path / "ndhm.in-6.5.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for f in sorted((ig / "package").glob("*.json")):
            data = json.loads(f.read_text())
            if f.name == "ValueSet-ndhm-diet-type.json":
                data["title"] = "Diet type (changed)"
                changed = tmp_path / f.name
                changed.write_text(json.dumps(data))
                tar.add(changed, arcname=f"package/{f.name}")
            else:
                tar.add(f, arcname=f"package/{f.name}")
        example = "example/Patient-example-01.json"
        tar.add(ig / "package" / example, arcname=f"package/{example}")
    package = read_package(tgz)
    assert (package.name, package.version, len(package.resources)) == ("ndhm.in", "6.5.0", 132)
    again = install(api.fhir, package, access=SYSTEM)
    assert (again.created["StructureDefinition"], again.unchanged["StructureDefinition"]) == (0, 63)
    assert (again.updated["ValueSet"], again.unchanged["ValueSet"]) == (1, 47)
    assert api.http.get("Patient").json()["total"] == 0  # examples are not installed
    vs = api.http.get("ValueSet/ndhm-diet-type").json()
    assert vs["title"] == "Diet type (changed)" and vs["meta"]["versionId"] == "2"
    missing = cli(api, str(tmp_path / "nope"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def _samples(ig: Path) -> list[Path]:
    return sorted((ig / "package" / "example").glob("*.json")) + sorted((ig / "official-samples").glob("*.json"))


def test_examples_and_official_samples_validate_against_their_profiles(api, ig: Path) -> None:  # type: ignore[no-untyped-def]
    install(api.fhir, read_package(ig / "package"), access=SYSTEM)
    failures: dict[str, list[str]] = {}
    checked = 0
    for path in _samples(ig):
        resource: dict[str, Any] = json.loads(path.read_text())
        if resource.get("resourceType") in SKIP:
            continue
        r = api.http.post(f"{resource['resourceType']}/$validate", json=resource)
        assert r.status_code == 200, (path.name, r.text)
        errors = [i["diagnostics"] for i in r.json()["issue"] if i["severity"] in ("error", "fatal")]
        if errors:
            failures[f"{path.parent.name}/{path.name}"] = errors
        checked += 1
    assert checked > 250
    # Invalid against the IG itself (the IG publisher's own run does not flag it): its "Follow Up" section is
    # coded 736271009 (Outpatient care plan) where the FollowUp slice fixes 390906007, so it matches no slice,
    # and Composition.section's slicing is openAtEnd: the DocumentReference section after it is not allowed.
    open_at_end = ["Bundle.entry[0].resource.section[7]: the slice 'DocumentReference' follows an element that "
                   "matches no slice: Composition.section allows those only at the end (openAtEnd)"]
    assert failures == {"example/Bundle-OPConsultNote-example-05.json": open_at_end,
                        "official-samples/Bundle-OPConsultNote-example-05.json": open_at_end}


def test_broken_examples_are_caught(api, ig: Path) -> None:  # type: ignore[no-untyped-def]
    install(api.fhir, read_package(ig / "package"), access=SYSTEM)
    bundle = json.loads((ig / "package" / "example" / "Bundle-OPConsultNote-example-05.json").read_text())
    bundle["type"] = "collection"
    del bundle["identifier"]
    bundle["entry"][0]["resource"]["type"]["coding"][0]["code"] = "11111111"
    r = api.http.post("Bundle/$validate", json=bundle)
    errors = {i["expression"][0]: i["diagnostics"] for i in r.json()["issue"] if i["severity"] == "error"}
    assert "document" in errors["Bundle.type"]
    assert "minimum cardinality" in errors["Bundle.identifier"]
    assert "371530004" in errors["Bundle.entry[0].resource.type.coding[0].code"]
    observation = json.loads((ig / "package" / "example" / "Observation-example-06.json").read_text())
    observation["code"] = {"coding": [{"system": "http://loinc.org", "code": "0000-0", "display": "x"}]}
    issues = api.http.post("Observation/$validate", json=observation).json()["issue"]
    assert any(i["severity"] == "warning" and "ndhm-physical-activity" in i["diagnostics"] for i in issues)


def test_differential_only_package_gets_snapshots_that_validate_alike(api, ig: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The IG with every snapshot removed: generated snapshots have the shipped ones' elements, and the
    examples validate (and break) as with the shipped ones."""
    folder = tmp_path / "package"
    folder.mkdir()
    shipped: dict[str, set[str]] = {}
    for f in sorted((ig / "package").glob("*.json")):
        data = json.loads(f.read_text())
        if data.get("resourceType") == "StructureDefinition":
            shipped[data["url"]] = {e["id"] for e in data.pop("snapshot")["element"]}
        (folder / f.name).write_text(json.dumps(data))
    package = read_package(tmp_path)
    assert len(package.no_snapshot) == 63
    install(api.fhir, package, access=SYSTEM)
    assert package.no_snapshot == []
    for url, ids in shipped.items():
        stored = api.http.get("StructureDefinition", params={"url": url}).json()["entry"][0]["resource"]
        assert {e["id"] for e in stored["snapshot"]["element"]} == ids, url
    for name in ("Bundle-DischargeSummary-example-04.json", "Bundle-Prescription-example-06.json",
                 "Patient-example-01.json", "Observation-example-06.json"):
        resource = json.loads((ig / "package" / "example" / name).read_text())
        r = api.http.post(f"{resource['resourceType']}/$validate", json=resource)
        assert not [i for i in r.json()["issue"] if i["severity"] == "error"], (name, r.text)
    patient = json.loads((ig / "package" / "example" / "Patient-example-01.json").read_text())
    del patient["identifier"]
    issues = api.http.post("Patient/$validate", json=patient).json()["issue"]
    assert any(i["severity"] == "error" and i["expression"] == ["Patient.identifier"] for i in issues)


def test_broken_copies_extension_context_and_narrative(api, ig: Path) -> None:  # type: ignore[no-untyped-def]
    install(api.fhir, read_package(ig / "package"), access=SYSTEM)
    example = ig / "package" / "example"

    def errors(resource: dict[str, Any]) -> dict[str, str]:
        r = api.http.post(f"{resource['resourceType']}/$validate", json=resource)
        assert r.status_code == 200, r.text
        return {i["expression"][0]: i["diagnostics"] for i in r.json()["issue"] if i["severity"] == "error"}

    immunization = json.loads((example / "Immunization-example-WHO-DDCC.json").read_text())
    assert errors(immunization) == {}
    immunization["patient"]["extension"] = immunization.pop("extension")  # BrandName: context Immunization
    assert "not allowed on Immunization.patient" in errors(immunization)["Immunization.patient.extension[0]"]
    plan = json.loads((example / "InsurancePlan-example-01.json").read_text())
    plan["ownedBy"]["extension"] = [plan["extension"][2]]  # Claim-Exclusion: InsurancePlan or its plan only
    assert "InsurancePlan#InsurancePlan.plan" in errors(plan)["InsurancePlan.ownedBy.extension[0]"]
    patient = json.loads((example / "Patient-example-01.json").read_text())
    patient["text"]["div"] = patient["text"]["div"].replace("</div>", "<script>x()</script></div>")
    assert "txt-1" in errors(patient)["Patient.text.div"]
