"""A hospital that is a tenant (issue 13) claims too: its endpoint_url is ``/t/{tenant}/hcx``, the callbacks
reaching it are queued and applied in that hospital's own store, and nothing lands in the default's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Backend, wait_until
from tests.integration.claims_support import ClaimsServer, Sandbox, records, start_claims_server, start_sandbox, store
from tests.integration.test_claims_hcx import status_of, submit

pytestmark = pytest.mark.parametrize("backend", ["postgresql-tenant"], indirect=True)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield from start_sandbox(tmp_path_factory.mktemp("tenant-sandbox"))


@pytest.fixture(scope="module")
def claims(backend: Backend, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClaimsServer]:
    backend.truncate()
    yield from start_claims_server(backend, sandbox, tmp_path_factory.mktemp("tenant-claims"), ig=False)


def test_a_tenants_callbacks_reach_its_own_store(claims: ClaimsServer, sandbox: Sandbox, backend: Backend) -> None:
    assert claims.root.endswith(f"/t/{backend.tenant}") and claims.url.endswith(f"/fhir/{backend.tenant}")
    s = uuid.uuid4().hex[:8]
    store(claims, records(s))
    cid = submit(claims, f"CoverageEligibilityRequest/cer-{s}")
    wait_until(lambda: status_of(claims, f"CoverageEligibilityRequest/cer-{s}", cid) == "complete", 30,
               "the payer's answer at the tenant's /t/{tenant}/hcx")
    [answer] = claims.search("CoverageEligibilityResponse", request=f"CoverageEligibilityRequest/cer-{s}")
    assert answer["insurance"][0]["inforce"] is True
    default = httpx.get(claims.root.rsplit("/t/", 1)[0] + "/fhir/CoverageEligibilityResponse",
                        headers={"Accept": "application/fhir+json"})
    assert default.status_code == 200 and default.json().get("total", 0) == 0  # the default hospital has none
