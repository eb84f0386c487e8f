"""LOINC from its release: ``Loinc.csv`` (LoincTable/) and, when present, the component hierarchy
(``ComponentHierarchyBySystem.csv``, or ``MultiAxialHierarchy.csv`` in older releases) whose LP part
codes become the parents of the LOINC codes under them."""

from __future__ import annotations

import csv
from pathlib import Path

from fhir_server.errors import INVALID, FhirError
from terminology.importers import Import

URL = "http://loinc.org"
# Loinc.csv columns that are LOINC properties in FHIR (http://loinc.org CodeSystem property codes).
PROPERTIES = ("COMPONENT", "PROPERTY", "TIME_ASPCT", "SYSTEM", "SCALE_TYP", "METHOD_TYP", "CLASS", "CLASSTYPE",
              "STATUS", "ORDER_OBS")
HIERARCHIES = ("ComponentHierarchyBySystem.csv", "MultiAxialHierarchy.csv")


def _find(root: Path, name: str) -> Path | None:
    if root.is_file():
        return root if root.name == name else None
    return next(iter(sorted(root.rglob(name))), None)


def read(path: str) -> Import:
    root = Path(path)
    table = _find(root, "Loinc.csv")
    if table is None:
        raise FhirError(400, INVALID, f"No Loinc.csv under {path}", ("PATH",))
    imp = Import("loinc", URL, "", "LOINC", "LOINC Code System", "Regenstrief Institute, Inc.")
    with table.open(newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            code = row.get("LOINC_NUM")
            if not code:
                continue
            concept = imp.concept(code, row.get("LONG_COMMON_NAME") or row.get("SHORTNAME") or row.get("COMPONENT"))
            concept.properties = [{"code": p, "valueString": row[p]} for p in PROPERTIES if row.get(p)]
            if row.get("SHORTNAME"):
                concept.designations.append({"use": {"system": URL, "code": "SHORTNAME"}, "value": row["SHORTNAME"]})
            if row.get("VersionLastChanged") and row["VersionLastChanged"] > imp.version:
                imp.version = row["VersionLastChanged"]
    hierarchy = next((h for h in (_find(root, n) for n in HIERARCHIES) if h is not None), None)
    if hierarchy is not None and not root.is_file():
        with hierarchy.open(newline="", encoding="utf-8-sig") as fh:
            for row in csv.DictReader(fh):
                code, parent = row.get("CODE"), row.get("IMMEDIATE_PARENT")
                if not code:
                    continue
                concept = imp.concept(code, row.get("CODE_TEXT"))
                if parent:
                    imp.concept(parent)
                    concept.parents.add(parent)
    return imp
