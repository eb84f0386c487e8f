"""Compartment and system-level search (both databases). The router does not send these URLs here yet, so
the tests call the search functions inside a real unit of work of the live server."""

from __future__ import annotations

from typing import Any

from fhir_server.rest.request import FhirRequest
from fhir_server.rest.search import search_compartment, search_system
from tests.conftest import SYSTEM, LiveServer
from tests.integration.search_support import post


def run(api: LiveServer, fn: Any, *args: Any, query: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
    req = FhirRequest("GET", "", query=query, base_url=api.url, access=SYSTEM)
    try:
        resp = api.fhir.uow.run(lambda repo: fn(req, repo, *args, query, default_count=20, max_count=1000),
                                write=False, access=SYSTEM)
    except Exception as exc:  # FhirError
        return getattr(exc, "status", 500), {}
    return resp.status, resp.resource or {}


def refs(bundle: dict[str, Any]) -> list[str]:
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
            if e["search"]["mode"] == "match"]


def test_compartment_search(api: LiveServer) -> None:
    pat, other = post(api, {"resourceType": "Patient"}), post(api, {"resourceType": "Patient"})
    o1 = post(api, {"resourceType": "Observation", "status": "final", "code": {"text": "a"},
                    "subject": {"reference": f"Patient/{pat}"}})
    o2 = post(api, {"resourceType": "Observation", "status": "final", "code": {"text": "b"},
                    "performer": [{"reference": f"Patient/{pat}"}]})
    post(api, {"resourceType": "Observation", "status": "final", "code": {"text": "a"},
               "subject": {"reference": f"Patient/{other}"}})
    status, bundle = run(api, search_compartment, "Patient", pat, "Observation", query=[])
    assert status == 200 and set(refs(bundle)) == {f"Observation/{o1}", f"Observation/{o2}"}
    assert bundle["link"][0]["url"].split("?")[0].endswith(f"/Patient/{pat}/Observation")
    status, bundle = run(api, search_compartment, "Patient", pat, "Observation", query=[("code:text", "a")])
    assert refs(bundle) == [f"Observation/{o1}"]
    status, _ = run(api, search_compartment, "Patient", pat, "Organization", query=[])
    assert status == 404  # Organizations are not in the Patient compartment


def test_system_search_pages_across_types(api: LiveServer) -> None:
    tag = {"tag": [{"code": "x"}]}
    made = {"Patient/" + post(api, {"resourceType": "Patient", "meta": tag}) for _ in range(3)}
    made |= {"Observation/" + post(api, {"resourceType": "Observation", "status": "final", "code": {"text": "a"},
                                         "meta": tag}) for _ in range(3)}
    post(api, {"resourceType": "Patient"})  # untagged
    seen: list[str] = []
    query = [("_type", "Patient,Observation"), ("_tag", "x"), ("_count", "4"), ("_sort", "-_lastUpdated")]
    status, bundle = run(api, search_system, query=query)
    assert status == 200
    seen += refs(bundle)
    nxt = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    cursor = nxt.split("_cursor=")[1]
    status, bundle = run(api, search_system, query=[*query, ("_cursor", cursor)])
    seen += refs(bundle)
    assert len(seen) == 6 and set(seen) == made
    status, _ = run(api, search_system, query=[("_tag", "x")])
    assert status == 400  # _type is required
