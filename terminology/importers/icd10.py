"""ICD-10 from the WHO ClaML XML release: every Class (chapter, block, category) with its preferred
rubric as display and its SuperClass as parent."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from fhir_server.errors import INVALID, FhirError
from terminology.importers import Import

URL = "http://hl7.org/fhir/sid/icd-10"


def _text(element: ET.Element | None) -> str:
    return " ".join("".join(element.itertext()).split()) if element is not None else ""


def read(path: str) -> Import:
    file = Path(path)
    if file.is_dir():
        found = sorted(file.rglob("*.xml"))
        if not found:
            raise FhirError(400, INVALID, f"No ClaML .xml file under {path}", ("PATH",))
        file = found[0]
    imp = Import("icd-10", URL, "", "ICD10", "International Classification of Diseases, 10th revision",
                 "World Health Organization")
    try:
        for _, element in ET.iterparse(file, events=("end",)):
            if element.tag == "Title":
                imp.version = element.get("version") or imp.version
                imp.title = (element.text or "").strip() or imp.title
            elif element.tag == "Class" and element.get("code"):
                preferred = next((r for r in element.findall("Rubric") if r.get("kind") == "preferred"), None)
                concept = imp.concept(element.get("code", ""), _text(preferred.find("Label")) if preferred is not None
                                      else None)
                concept.parents |= {s.get("code", "") for s in element.findall("SuperClass") if s.get("code")}
                if element.get("kind"):
                    concept.properties.append({"code": "kind", "valueCode": element.get("kind")})
                element.clear()
    except ET.ParseError as exc:
        raise FhirError(400, INVALID, f"{file.name} is not well-formed ClaML: {exc}", ("PATH",)) from None
    if not imp.concepts:
        raise FhirError(400, INVALID, f"{file.name} has no ClaML Class elements", ("PATH",))
    return imp
