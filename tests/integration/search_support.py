"""Helpers of the search tests over real HTTP (no tests here): create a resource, the ids a search matches."""

from __future__ import annotations

from typing import Any

from tests.conftest import LiveServer


def post(live: LiveServer, resource: dict[str, Any]) -> str:
    """Create ``resource``; its new id."""
    resp = live.http.post(resource["resourceType"], json=resource)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def ids(live: LiveServer, query: str) -> set[str]:
    """The ids of a search's matches (not its includes), on the first page."""
    resp = live.http.get(query)
    assert resp.status_code == 200, resp.text
    return {e["resource"]["id"] for e in resp.json().get("entry", []) if e["search"]["mode"] == "match"}
