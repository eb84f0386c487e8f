"""FHIR's wire formats beside JSON (xml.py): converters driven by the R4 StructureDefinitions."""
