from fhir_server.api.access_log import masked_target


def test_query_values_are_masked() -> None:
    target = masked_target("/fhir/Patient", b"identifier=urn%3Amrn%7C12345&name=Sharma&_count=5")
    assert target == "/fhir/Patient?identifier=***&name=***&_count=***"
    assert "12345" not in target and "Sharma" not in target
    assert masked_target("/fhir/metadata", b"") == "/fhir/metadata"
