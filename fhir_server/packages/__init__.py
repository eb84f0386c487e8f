"""FHIR packages (npm-style IG packages) and the canonical resources they bring (StructureDefinition,
ValueSet, CodeSystem...), found by canonical URL through ``canonical.py``."""
