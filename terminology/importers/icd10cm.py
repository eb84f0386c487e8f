"""ICD-10-CM from the CMS tabular XML (``icd10cm_tabular_YYYY.xml``): chapter > section > diag, nested.

Chapters become concepts coded by their range (``A00-B99``, read from the description), sections by their
id (``A00-A09``); both are groupers (``notSelectable``), as in the tabular they are no codes. Every
``diag`` is a code with its ``desc`` as display and its enclosing diag (or section) as parent. A
``sevenChrDef`` applies to the diag and everything below it: each leaf in its scope gets one code per 7th
character, padded with the placeholder X to six characters (``S06.9`` + A -> ``S06.9XXA``), child of the
leaf, displayed as "<leaf>, <extension>".
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from fhir_server.errors import INVALID, FhirError
from terminology.importers import Import

URL = "http://hl7.org/fhir/sid/icd-10-cm"
_RANGE = re.compile(r"\(([A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]+)?-[A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]+)?)\)\s*$")


def _text(element: ET.Element | None) -> str:
    return " ".join("".join(element.itertext()).split()) if element is not None else ""


def _seventh(diag: ET.Element) -> list[tuple[str, str]] | None:
    found = diag.find("sevenChrDef")
    if found is None:
        return None
    return [(e.get("char", ""), _text(e)) for e in found.findall("extension") if e.get("char")]


def _with_seventh(code: str, char: str) -> str:
    stem, _, rest = code.partition(".")
    rest = (rest + "XXX")[:3]  # 3 characters + "." + 3 more: the 7th goes last
    return f"{stem}.{rest}{char}"


def _diag(imp: Import, diag: ET.Element, parent: str, seventh: list[tuple[str, str]] | None) -> None:
    code = (diag.findtext("name") or "").strip()
    if not code:
        return
    concept = imp.concept(code, _text(diag.find("desc")) or None)
    concept.parents.add(parent)
    concept.properties.append({"code": "kind", "valueCode": "category"})
    seventh = _seventh(diag) or seventh
    children = diag.findall("diag")
    for child in children:
        _diag(imp, child, code, seventh)
    if not children and seventh:
        for char, label in seventh:
            extended = imp.concept(_with_seventh(code, char), f"{concept.display}, {label}")
            extended.parents.add(code)
            extended.properties.append({"code": "kind", "valueCode": "category"})


def read(path: str) -> Import:
    file = Path(path)
    if file.is_dir():
        found = sorted(file.rglob("icd10cm_tabular*.xml")) or sorted(file.rglob("*.xml"))
        if not found:
            raise FhirError(400, INVALID, f"No icd10cm_tabular .xml file under {path}", ("PATH",))
        file = found[0]
    imp = Import("icd-10-cm", URL, "", "ICD10CM", "International Classification of Diseases, 10th Revision, "
                 "Clinical Modification", "Centers for Medicare & Medicaid Services / NCHS")
    try:
        root = ET.parse(file).getroot()
    except ET.ParseError as exc:
        raise FhirError(400, INVALID, f"{file.name} is not well-formed XML: {exc}", ("PATH",)) from None
    if root.tag != "ICD10CM.tabular":
        raise FhirError(400, INVALID, f"{file.name} is not an ICD-10-CM tabular file (root {root.tag})", ("PATH",))
    imp.version = (root.findtext("version") or "").strip()
    for chapter in root.findall("chapter"):
        desc = _text(chapter.find("desc"))
        m = _RANGE.search(desc)
        chapter_code = m.group(1) if m else f"chapter-{(chapter.findtext('name') or '').strip()}"
        grouper = imp.concept(chapter_code, desc or None)
        grouper.properties += [{"code": "kind", "valueCode": "chapter"},
                               {"code": "notSelectable", "valueBoolean": True}]
        for section in chapter.findall("section"):
            section_code = section.get("id") or ""
            if not section_code:
                continue
            block = imp.concept(section_code, _text(section.find("desc")) or None)
            block.parents.add(chapter_code)
            block.properties += [{"code": "kind", "valueCode": "section"},
                                 {"code": "notSelectable", "valueBoolean": True}]
            for diag in section.findall("diag"):
                _diag(imp, diag, section_code, None)
    if not imp.concepts:
        raise FhirError(400, INVALID, f"{file.name} has no chapters", ("PATH",))
    return imp
