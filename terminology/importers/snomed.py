"""SNOMED CT from an RF2 snapshot: concepts, descriptions (the preferred term of the en-US language
reference set when it is there, else the first active synonym) and active is-a relationships."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from fhir_server.errors import INVALID, FhirError
from terminology.importers import Import

URL = "http://snomed.info/sct"
IS_A = "116680003"
FSN = "900000000000003001"
SYNONYM = "900000000000013009"
PREFERRED = "900000000000548007"
US_ENGLISH = "900000000000509007"


def _rows(root: Path, pattern: str) -> Iterator[dict[str, str]]:
    for file in sorted(root.rglob(pattern)):
        with file.open(newline="", encoding="utf-8") as fh:
            yield from csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)


def read(path: str) -> Import:
    root = Path(path)
    if not any(root.rglob("sct2_Concept_*Snapshot*.txt")):
        raise FhirError(400, INVALID, f"No RF2 sct2_Concept_Snapshot file under {path}", ("PATH",))
    imp = Import("sct", URL, "", "SNOMED_CT", "SNOMED CT", "SNOMED International")
    active: set[str] = set()
    for row in _rows(root, "sct2_Concept_*Snapshot*.txt"):
        imp.version = max(imp.version, row["effectiveTime"])  # the release date: its latest change
        if row["active"] == "1":
            active.add(row["id"])
    preferred = {r["referencedComponentId"] for r in _rows(root, "der2_cRefset_Language*Snapshot*.txt")
                 if r["active"] == "1" and r["refsetId"] == US_ENGLISH and r["acceptabilityId"] == PREFERRED}
    names: dict[str, tuple[int, str]] = {}  # concept -> (rank, term): lower rank wins
    fsn: dict[str, str] = {}
    for row in _rows(root, "sct2_Description_*Snapshot*.txt"):
        cid = row["conceptId"]
        if row["active"] != "1" or cid not in active:
            continue
        if row["typeId"] == FSN:
            fsn[cid] = row["term"]
            continue
        rank = 0 if row["id"] in preferred else 1
        if cid not in names or rank < names[cid][0]:
            names[cid] = (rank, row["term"])
    for code in sorted(active, key=int):
        concept = imp.concept(code, names[code][1] if code in names else fsn.get(code))
        if code in fsn:
            concept.designations.append({"language": "en", "use": {"system": URL, "code": FSN}, "value": fsn[code]})
    for row in _rows(root, "sct2_Relationship_*Snapshot*.txt"):
        if row["active"] == "1" and row["typeId"] == IS_A and row["sourceId"] in imp.concepts:
            imp.concepts[row["sourceId"]].parents.add(row["destinationId"])
    if imp.version:
        imp.version = f"http://snomed.info/sct/900000000000207008/version/{imp.version}"
    return imp
