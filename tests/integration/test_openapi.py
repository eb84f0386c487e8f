"""The FHIR API's OpenAPI (generated from the CapabilityStatement) and the Swagger UI served without a CDN."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from openapi_spec_validator import validate

from tests.conftest import LiveServer, wait_until
from tests.integration.test_auth_browser import browser  # noqa: F401  (the headless Chromium fixture)


def _root(api: LiveServer) -> str:
    return api.url.rsplit("/fhir", 1)[0]


def _operation_ids(doc: dict[str, Any]) -> list[str]:
    return [op["operationId"] for item in doc["paths"].values() for op in item.values() if isinstance(op, dict)]


def test_one_type_from_the_capability_statement(api: LiveServer) -> None:
    doc = api.http.get(f"{_root(api)}/openapi/fhir.json", params={"part": "Patient"}).json()
    validate(doc)  # a valid OpenAPI 3.0 document
    paths = doc["paths"]
    assert set(paths["/Patient"]) == {"get", "post"} and set(paths["/Patient/{id}"]) == {"get", "put", "patch",
                                                                                         "delete"}
    assert "get" in paths["/Patient/{id}/_history/{vid}"] and "post" in paths["/Patient/_search"]
    assert "post" in paths["/Patient/{id}/$everything"]  # an instance operation of the registry
    cs = api.http.get("metadata").json()
    patient = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    documented = {p["name"] for p in paths["/Patient"]["get"]["parameters"]}
    assert {p["name"] for p in patient["searchParam"]} <= documented and "_count" in documented
    assert doc["servers"] == [{"url": api.url}]
    assert not any(p.startswith("/Observation") for p in paths)


def test_the_whole_api_has_unique_operation_ids(api: LiveServer) -> None:
    if api.backend.name != "sqlite":
        pytest.skip("the document does not depend on the database")
    whole = api.http.get(f"{_root(api)}/openapi/fhir.json").json()  # every part is validated as the one above
    ids = _operation_ids(whole)
    assert len(ids) > 146 * 8 and [i for i, n in Counter(ids).items() if n > 1] == []
    assert {"transaction", "history-system", "op-export-system", "read-Observation"} <= set(ids)
    system = api.http.get(f"{_root(api)}/openapi/fhir.json", params={"part": "system"}).json()
    validate(system)
    assert "/" in system["paths"] and "/$export" in system["paths"] and "/Patient" not in system["paths"]
    server_doc = api.http.get(f"{_root(api)}/openapi.json").json()  # FastAPI's own routes
    server_ids = _operation_ids(server_doc)
    assert server_ids and [i for i, n in Counter(server_ids).items() if n > 1] == []
    bad = api.http.get(f"{_root(api)}/openapi/fhir.json", params={"part": "NoSuchType"})
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["part"]


def test_swagger_ui_uses_only_local_files(api: LiveServer) -> None:
    page = api.http.get(f"{_root(api)}/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/docs/assets/") for s in sources)
    assert "http://" not in page.text and "https://" not in page.text
    for source in sources:
        assert api.http.get(f"{_root(api)}{source}").status_code == 200
    assert api.http.get(f"{_root(api)}/redoc").status_code == 404  # FastAPI's CDN-backed page is off


def test_swagger_ui_renders_in_chromium(api: LiveServer, browser: Any, tmp_path: Any) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    if api.backend.name != "sqlite":
        pytest.skip("the page does not depend on the database")
    browser.get(f"{_root(api)}/docs")

    def rendered() -> bool:
        return len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) > 5

    wait_until(rendered, 30, "Swagger UI to render the Patient operations")
    summaries = " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    assert "/Patient/{id}" in summaries
    browser.save_screenshot(str(tmp_path / "docs.png"))
