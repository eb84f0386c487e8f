"""Full-text pieces without a database: documents, the simple syntax, the backend expressions."""

from __future__ import annotations

import pytest

from fhir_server.search.fulltext.database import fts5_expression, tsquery_expression
from fhir_server.search.fulltext.documents import content, narrative
from fhir_server.search.fulltext.elasticsearch import es_query
from fhir_server.search.fulltext.syntax import Term, TextQuery, TextSyntaxError, parse_text

PATIENT = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3"},
           "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>Chloé '
                                                  "<b>Dupré</b> &amp; family, HbA1c 7.2</p></div>"},
           "name": [{"family": "Dupré", "given": ["Chloé"]}], "gender": "female",
           "managingOrganization": {"reference": "Organization/xyz", "display": "Hôpital Nord"}}


def test_narrative_is_the_folded_words_of_the_div() -> None:
    assert narrative(PATIENT) == "chloe dupre family hba1c 7 2"
    assert narrative({"resourceType": "Basic"}) == ""


def test_content_has_every_string_but_structure() -> None:
    words = content(PATIENT).split()
    assert {"chloe", "dupre", "female", "hopital", "nord", "hba1c"} <= set(words)
    assert "xyz" not in words and "p1" not in words  # references and ids are not text
    assert "organization" not in words


def test_syntax() -> None:
    assert parse_text("chloé dupré") == TextQuery(((Term(("chloe",)), Term(("dupre",))),))
    assert parse_text('a OR "b c"') == TextQuery(((Term(("a",)),), (Term(("b", "c")),)))
    assert parse_text("a AND b") == parse_text("a b")
    assert parse_text("7.2") == TextQuery(((Term(("7", "2")),),))  # written as one token: a phrase
    for bad in ('"open', "OR a", "a OR", "   ", "!!"):
        with pytest.raises(TextSyntaxError):
            parse_text(bad)


def test_backend_expressions() -> None:
    queries = [parse_text('glucose "blood sugar" OR hba1c'), parse_text("x")]
    assert fts5_expression(queries) == '("glucose" AND "blood sugar") OR ("hba1c") OR ("x")'
    assert tsquery_expression(queries) == "((glucose) & (blood <-> sugar)) | ((hba1c)) | ((x))"
    q = es_query("Observation", "narrative", queries)
    assert q["bool"]["filter"] == [{"term": {"resource_type": "Observation"}}]
    alternatives = q["bool"]["must"][0]["bool"]["should"]
    assert alternatives[0] == {"bool": {"must": [{"match": {"narrative": {"query": "glucose"}}},
                                                 {"match_phrase": {"narrative": "blood sugar"}}]}}
    assert len(alternatives) == 3
