"""The $validate-code cache (terminology/cache.py) and SMART tokens, on both databases: a ValueSet cached for
one caller is still not found for a caller whose token may not read ValueSets (as without the cache)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Backend
from tests.integration.test_auth_support import Smart, smart_server
from tests.integration.test_terminology_operations import POLYGONS, SHAPES, fixture, params

# Its own ValueSet: other modules' tests empty the store, and stored versions then start again at 1.
URL = POLYGONS + "-access"
QUERY = {"url": URL, "system": SHAPES, "code": "square"}


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend)


def test_a_cached_value_set_is_not_found_for_a_caller_who_may_not_read_it(smart: Smart) -> None:
    shapes, polygons = fixture("shapes.json"), fixture("shapes-polygons.json") | {"id": "polygons-access", "url": URL}
    for res in (shapes, polygons):
        r = smart.as_admin("PUT", f"{res['resourceType']}/{res['id']}", json=res)
        assert r.status_code in (200, 201), r.text
    reader = smart.system_token("system/ValueSet.rs system/CodeSystem.rs")
    for _ in range(2):  # the second answer comes from the cache
        r = smart.fhir("GET", "ValueSet/$validate-code", reader, params=QUERY)
        assert r.status_code == 200, r.text
        assert params(r.json())["result"][0]["valueBoolean"] is True, r.text
    other = smart.system_token("system/Patient.rs")
    r = smart.fhir("GET", "ValueSet/$validate-code", other, params=QUERY)
    assert r.status_code == 404, r.text
    assert r.json()["issue"][0]["expression"] == ["url"]
