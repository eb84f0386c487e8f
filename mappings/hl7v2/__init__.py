"""HL7 v2 -> FHIR: the ER7 message model, a small template engine, and the mapping data it runs."""
