"""Shared pieces of the bulk data tests: kick-off, polling to the manifest, downloads (no tests here)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.conftest import wait_until

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def kick_off(http: httpx.Client, url: str, token: str | None = None, **kw: Any) -> str:
    headers = {**ASYNC, **kw.pop("headers", {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    method = "POST" if "json" in kw or "content" in kw else "GET"
    resp = http.request(method, url, headers=headers, **kw)
    assert resp.status_code == 202, resp.text
    return str(resp.headers["Content-Location"])


def poll(http: httpx.Client, status_url: str, token: str | None = None, timeout: float = 60) -> httpx.Response:
    """Poll the status URL until it stops answering 202 (checking the 202's headers on the way)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    last: list[httpx.Response] = []

    def done() -> bool:
        resp = http.get(status_url, headers=headers)
        if resp.status_code == 202:
            assert resp.headers["Retry-After"].isdigit() and resp.headers["X-Progress"]
            return False
        last.append(resp)
        return True

    wait_until(done, timeout, "the bulk job to finish")
    return last[0]


def download(http: httpx.Client, manifest: dict[str, Any], token: str | None = None,
             key: str = "output") -> dict[str, list[dict[str, Any]]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out: dict[str, list[dict[str, Any]]] = {}
    for item in manifest[key]:
        resp = http.get(item["url"], headers=headers)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("application/fhir+ndjson")
        lines = [orjson.loads(line) for line in resp.content.splitlines() if line.strip()]
        assert len(lines) == item["count"]
        out.setdefault(item["type"], []).extend(lines)
    return out


def export(http: httpx.Client, url: str, token: str | None = None, **kw: Any) -> dict[str, list[dict[str, Any]]]:
    resp = poll(http, kick_off(http, url, token, **kw), token)
    assert resp.status_code == 200, resp.text
    return download(http, resp.json(), token)
