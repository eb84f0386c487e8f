"""The FHIR R4 core terminology preload (terminology/core.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from terminology import preloading
from terminology.core import core_loaded, core_resources, load_core
from tests.conftest import SYSTEM, _free_port, wait_until
from tests.integration.test_terminology_operations import params

GENDER_CS = "http://hl7.org/fhir/administrative-gender"
GENDER_VS = "http://hl7.org/fhir/ValueSet/administrative-gender"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ENCOUNTER_VS = "http://terminology.hl7.org/ValueSet/v3-ActEncounterCode"
SOME = [GENDER_CS, GENDER_VS, ACT_CODE, ENCOUNTER_VS]


def test_core_subset_loads_once_and_answers_operations(api) -> None:  # type: ignore[no-untyped-def]
    first = load_core(api.fhir, SOME, access=SYSTEM)
    assert (first.loaded, first.present, first.rejected) == (4, 0, 0)
    again = load_core(api.fhir, SOME, access=SYSTEM)
    assert (again.loaded, again.present) == (0, 4)
    assert core_loaded(api.backend.engine)

    vs = api.http.get("ValueSet/$expand", params={"url": GENDER_VS}).json()
    assert [c["code"] for c in vs["expansion"]["contains"]] == ["male", "female", "other", "unknown"]
    r = api.http.get("ValueSet/administrative-gender/$validate-code", params={"system": GENDER_CS, "code": "x"})
    assert params(r.json())["result"][0]["valueBoolean"] is False

    encounter = api.http.get("ValueSet/$expand", params={"url": ENCOUNTER_VS}).json()["expansion"]
    found = {c["code"] for c in encounter["contains"]}
    assert {"AMB", "EMER", "IMP", "HH", "VR"} <= found and "_ActEncounterCode" not in found
    assert encounter["total"] == len(found)
    amb = params(api.http.get("CodeSystem/$lookup", params={"system": ACT_CODE, "code": "AMB"}).json())
    assert amb["display"][0]["valueString"] == "ambulatory"
    sub = api.http.get("CodeSystem/$subsumes", params={"system": ACT_CODE, "codeA": "_ActEncounterCode",
                                                       "codeB": "AMB"})
    assert params(sub.json())["outcome"][0]["valueCode"] == "subsumes"
    grouper = api.http.get("ValueSet/$expand", params={"url": ENCOUNTER_VS, "filter": "ambul"}).json()
    assert [c["code"] for c in grouper["expansion"]["contains"]] == ["AMB"]


def test_core_resources_cover_every_code_system_and_value_set() -> None:
    everything = core_resources()
    kinds = [r["resourceType"] for r in everything]
    assert kinds.count("CodeSystem") == 1062 and kinds.count("ValueSet") == 1316
    assert kinds.index("ValueSet") == 1062  # CodeSystems first: value sets refer to them


@pytest.mark.slow
def test_cli_load_core_loads_everything(api) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "FHIR_DATABASE_URL": api.backend.settings.database_url, "FHIR_OUTBOX_DISPATCHER": "false"}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "fhir_server.cli", "terminology", "load-core"], env=env,
                         capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - started
    assert out.returncode == 0, out.stdout + out.stderr
    assert "loaded\t2378" in out.stdout and "rejected\t0" in out.stdout
    assert elapsed < 120, elapsed
    bundle = api.http.get("CodeSystem", params={"url": "http://hl7.org/fhir/observation-status"}).json()
    assert bundle["total"] == 1 if "total" in bundle else len(bundle["entry"]) == 1
    r = api.http.get("ValueSet/$validate-code", params={
        "url": "http://hl7.org/fhir/ValueSet/observation-status", "system": "http://hl7.org/fhir/observation-status",
        "code": "final"})
    assert params(r.json())["result"][0]["valueBoolean"] is True
    again = subprocess.run([sys.executable, "-m", "fhir_server.cli", "terminology", "load-core"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert "loaded\t0" in again.stdout and "already present\t2378" in again.stdout


def test_serve_preloads_the_core_when_missing(api) -> None:  # type: ignore[no-untyped-def]
    port = _free_port()
    env = {**os.environ, "FHIR_DATABASE_URL": api.backend.settings.database_url, "FHIR_OUTBOX_DISPATCHER": "false"}
    env.pop("FHIR_TERMINOLOGY_PRELOAD", None)
    proc = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "serve", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/fhir"

    def gender_known() -> bool:
        try:
            r = httpx.get(f"{base}/CodeSystem/$lookup", params={"system": GENDER_CS, "code": "female"}, timeout=2)
        except httpx.TransportError:
            return False
        return r.status_code == 200

    def all_loaded() -> bool:  # the last batch: ValueSets, loaded after every CodeSystem
        r = httpx.get(f"{base}/ValueSet", params={"_summary": "count"}, timeout=5)
        return r.status_code == 200 and r.json().get("total") == 1316

    last = core_resources()[-1]["url"]  # the last ValueSet the preload stores
    answers: list[int] = []

    def last_answers() -> bool:  # "not yet" while loading (503, Retry-After), never "no such ValueSet"
        r = httpx.get(f"{base}/ValueSet/$validate-code", params={"url": last, "code": "x"}, timeout=5)
        answers.append(r.status_code)
        assert r.status_code in (200, 503), r.text
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "5" and r.json()["issue"][0]["code"] == "transient"
        return r.status_code == 200

    try:
        wait_until(gender_known, 120, "the core terminology to be loaded by serve")
        wait_until(last_answers, 120, "the last core ValueSet to be answered")
        wait_until(all_loaded, 120, "every core ValueSet")  # never stop the server mid-load
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_a_core_value_set_not_stored_yet_is_503_while_the_preload_runs(api) -> None:  # type: ignore[no-untyped-def]
    """During serve's preload a core ValueSet not stored yet is "retry soon" (503, Retry-After), not a 404;
    once the preload ends, or for a URL that is not core, or in a hospital's schema, a missing one is a 404."""
    query = {"url": GENDER_VS, "code": "male"}
    assert api.http.get("ValueSet/$validate-code", params=query).status_code == 404
    preloading.started(api.backend.engine)
    try:
        r = api.http.get("ValueSet/$validate-code", params=query)
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert r.json()["issue"][0]["code"] == "transient" and GENDER_VS in r.json()["issue"][0]["diagnostics"]
        assert api.http.get("ValueSet/$expand", params={"url": GENDER_VS}).status_code == 503
        other = api.http.get("ValueSet/$expand", params={"url": "http://example.org/ValueSet/none"})
        assert other.status_code == 404
    finally:
        preloading.finished(api.backend.engine)
    assert api.http.get("ValueSet/$validate-code", params=query).status_code == 404

