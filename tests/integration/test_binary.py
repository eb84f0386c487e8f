"""Binary resources (binary.html, http.html#binary) with their bytes in the blob store, not the resource table:
raw and FHIR JSON forms, versions, limits, streaming in bounded memory, and the S3 store on a real
S3-compatible server (moto) on loopback. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from fhir_server.app import create_app
from fhir_server.binary.content import BLOB_EXT, pointer
from fhir_server.binary.s3 import S3BlobStore
from fhir_server.binary.store import BlobMissing
from fhir_server.config import Settings
from fhir_server.errors import FhirError
from fhir_server.hooks import HookPoint, WriteEvent
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.storage.models import RESOURCE, RESOURCE_HISTORY
from fhir_server.storage.repository import Repository
from tests.conftest import SYSTEM, Backend, LiveServer, _free_port, uvicorn_config, wait_until

FHIR_JSON = {"Content-Type": "application/fhir+json"}
RAW = {"Accept": "*/*"}
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(5000)


def stored_rows(api: LiveServer, rid: str) -> list[dict[str, Any]]:
    """The Binary's content as the resource and history tables hold it."""
    with api.backend.engine.connect() as conn:
        current = conn.execute(select(RESOURCE.c.content).where(
            RESOURCE.c.resource_type == "Binary", RESOURCE.c.id == rid)).scalar_one()
        history = conn.execute(select(RESOURCE_HISTORY.c.content).where(
            RESOURCE_HISTORY.c.resource_type == "Binary", RESOURCE_HISTORY.c.id == rid)).scalars().all()
    return [c for c in [current, *history] if c is not None]


def assert_externalised(api: LiveServer, rid: str, content: bytes) -> None:
    rows = stored_rows(api, rid)
    assert rows
    for row in rows:
        assert "data" not in row
        assert len(str(row)) < 2000  # the bytes are not in there in any form
    blob = pointer(rows[0])
    assert blob is not None and blob.size == len(content)
    assert blob.sha256 == hashlib.sha256(content).hexdigest()
    assert b"".join(api.fhir.binary.store.open(blob.key)) == content


@contextmanager
def binary_limit(api: LiveServer, limit: int) -> Iterator[None]:
    settings = api.fhir.settings
    saved = settings.max_binary_bytes
    settings.max_binary_bytes = limit
    try:
        yield
    finally:
        settings.max_binary_bytes = saved


def test_raw_round_trip_keeps_bytes_and_content_type(api: LiveServer) -> None:
    assert api.http.put("Patient/p1", json={"resourceType": "Patient", "id": "p1"}).status_code == 201  # referred to
    r = api.http.post("Binary", content=PDF, headers={"Content-Type": "application/pdf",
                                                      "X-Security-Context": "Patient/p1"})
    assert r.status_code == 201, r.text
    created = r.json()
    rid = created["id"]
    assert created["contentType"] == "application/pdf"
    assert created["securityContext"] == {"reference": "Patient/p1"}
    assert "data" not in created
    assert r.headers["location"] == f"{api.url}/Binary/{rid}/_history/1"
    assert r.headers["etag"] == 'W/"1"' and r.headers["last-modified"].endswith("GMT")

    got = api.http.get(f"Binary/{rid}", headers=RAW)
    assert got.status_code == 200
    assert got.content == PDF
    assert got.headers["content-type"] == "application/pdf"
    assert got.headers["content-length"] == str(len(PDF))
    assert got.headers["etag"] == 'W/"1"' and got.headers["last-modified"] == r.headers["last-modified"]
    assert got.headers["x-security-context"] == "Patient/p1"
    assert got.headers["x-content-type-options"] == "nosniff"
    # A client asking for the content's own type gets it too; HEAD gives the headers alone.
    assert api.http.get(f"Binary/{rid}", headers={"Accept": "application/pdf"}).content == PDF
    head = api.http.head(f"Binary/{rid}", headers=RAW)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(PDF)) and head.headers["content-type"] == "application/pdf"
    assert api.http.get(f"Binary/{rid}", headers={**RAW, "If-None-Match": 'W/"1"'}).status_code == 304
    assert_externalised(api, rid, PDF)


def test_json_form_on_request(api: LiveServer) -> None:
    rid = api.http.post("Binary", content=PNG, headers={"Content-Type": "image/png"}).json()["id"]
    for headers, query in (({"Accept": "application/fhir+json"}, ""), ({"Accept": "application/json"}, ""),
                           (RAW, "?_format=json"), ({"Accept": "application/fhir+json"}, "?_pretty=true")):
        r = api.http.get(f"Binary/{rid}{query}", headers=headers)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/fhir+json")
        body = r.json()
        assert body["resourceType"] == "Binary" and body["id"] == rid and body["meta"]["versionId"] == "1"
        assert body["contentType"] == "image/png"
        assert base64.b64decode(body["data"]) == PNG
        assert "_data" not in body  # the storage pointer is the server's business
        assert r.headers["content-length"] == str(len(r.content))
    # _summary / _elements shape the JSON form (data is not a summary element) and never the raw content.
    summary = api.http.get(f"Binary/{rid}?_summary=true").json()
    assert summary["contentType"] == "image/png" and "data" not in summary and "_data" not in summary
    assert base64.b64decode(api.http.get(f"Binary/{rid}?_elements=data").json()["data"]) == PNG
    assert api.http.get(f"Binary/{rid}?_summary=true", headers=RAW).content == PNG
    # The raw form is the default for a client that names no FHIR type.
    assert api.http.get(f"Binary/{rid}", headers={"Accept": "image/png, */*;q=0.1"}).content == PNG


def test_json_binary_with_data_is_externalised(api: LiveServer) -> None:
    body = {"resourceType": "Binary", "contentType": "application/pdf", "data": base64.b64encode(PDF).decode()}
    r = api.http.post("Binary", json=body, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert "data" not in r.json()
    assert_externalised(api, rid, PDF)
    assert api.http.get(f"Binary/{rid}", headers=RAW).content == PDF
    # The same bytes again are one blob (content-addressed keys).
    other = api.http.post("Binary", json=body, headers=FHIR_JSON).json()["id"]
    assert pointer(stored_rows(api, other)[0]) == pointer(stored_rows(api, rid)[0])


def test_transaction_bundle_binary_is_externalised(api: LiveServer) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0c1e4f5a-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Binary", "contentType": "image/png",
                      "data": base64.b64encode(PNG).decode()},
         "request": {"method": "POST", "url": "Binary"}},
        {"resource": {"resourceType": "DocumentReference", "status": "current",
                      "content": [{"attachment": {"contentType": "image/png",
                                                  "url": "urn:uuid:0c1e4f5a-0000-4000-8000-000000000001"}}]},
         "request": {"method": "POST", "url": "DocumentReference"}}]}
    r = api.http.post("", json=bundle, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    location = r.json()["entry"][0]["response"]["location"]
    rid = location.split("/")[1]
    assert_externalised(api, rid, PNG)
    assert api.http.get(f"Binary/{rid}", headers=RAW).content == PNG
    # A Bundle entry that reads a Binary gets the resource (the pointer, no bytes), never a stream.
    read = api.http.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Binary/{rid}"}}]}, headers=FHIR_JSON).json()
    assert read["entry"][0]["resource"]["contentType"] == "image/png"


def test_update_vread_and_delete(api: LiveServer) -> None:
    r = api.http.put("Binary/scan-7", content=PDF, headers={"Content-Type": "application/pdf"})
    assert r.status_code == 201 and r.json()["id"] == "scan-7"
    r = api.http.put("Binary/scan-7", content=PNG, headers={"Content-Type": "image/png", "If-Match": 'W/"1"'})
    assert r.status_code == 200 and r.headers["etag"] == 'W/"2"'
    assert r.headers["location"] == f"{api.url}/Binary/scan-7/_history/2"
    stale = api.http.put("Binary/scan-7", content=PNG, headers={"Content-Type": "image/png", "If-Match": 'W/"1"'})
    assert stale.status_code == 412

    v1 = api.http.get("Binary/scan-7/_history/1", headers=RAW)
    assert v1.content == PDF and v1.headers["content-type"] == "application/pdf" and v1.headers["etag"] == 'W/"1"'
    v2 = api.http.get("Binary/scan-7/_history/2", headers=RAW)
    assert v2.content == PNG and v2.headers["content-type"] == "image/png"
    assert base64.b64decode(api.http.get("Binary/scan-7/_history/1").json()["data"]) == PDF
    assert api.http.get("Binary/scan-7", headers=RAW).content == PNG

    # A JSON update keeping the stored content: the pointer the server itself showed is accepted.
    current = api.http.get("Binary?_id=scan-7").json()["entry"][0]["resource"]
    assert api.http.put("Patient/p9", json={"resourceType": "Patient", "id": "p9"}).status_code == 201  # referred to
    current["securityContext"] = {"reference": "Patient/p9"}
    r = api.http.put("Binary/scan-7", json=current, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert api.http.get("Binary/scan-7", headers=RAW).content == PNG

    assert api.http.delete("Binary/scan-7").status_code == 204
    assert api.http.get("Binary/scan-7", headers=RAW).status_code == 410
    assert api.http.get("Binary/scan-7/_history/1", headers=RAW).content == PDF  # history keeps its bytes


def test_patch_keeps_or_replaces_content(api: LiveServer) -> None:
    rid = api.http.post("Binary", content=PDF, headers={"Content-Type": "application/octet-stream"}).json()["id"]
    patch = {"Content-Type": "application/json-patch+json"}
    r = api.http.patch(f"Binary/{rid}", json=[{"op": "replace", "path": "/contentType", "value": "application/pdf"}],
                       headers=patch)
    assert r.status_code == 200, r.text
    got = api.http.get(f"Binary/{rid}", headers=RAW)
    assert got.content == PDF and got.headers["content-type"] == "application/pdf"
    r = api.http.patch(f"Binary/{rid}", json=[
        {"op": "add", "path": "/data", "value": base64.b64encode(PNG).decode()},
        {"op": "replace", "path": "/contentType", "value": "image/png"}], headers=patch)
    assert r.status_code == 200, r.text
    assert api.http.get(f"Binary/{rid}", headers=RAW).content == PNG
    assert_externalised(api, rid, PNG)


def test_raw_upload_is_stored_before_the_transaction(api: LiveServer) -> None:
    """Copying the content holds no database connection (on SQLite that would be the write lock)."""
    store = api.fhir.binary.store
    held: list[int] = []
    put = store.put

    def watching_put(*args: Any, **kwargs: Any) -> Any:
        held.append(api.backend.engine.pool.checkedout())  # type: ignore[attr-defined]
        return put(*args, **kwargs)

    store.put = watching_put  # type: ignore[method-assign]
    try:
        assert api.http.post("Binary", content=PDF, headers={"Content-Type": "application/pdf"}).status_code == 201
    finally:
        del store.put  # type: ignore[method-assign]
    assert held == [0]


def test_retried_raw_write(api: LiveServer) -> None:
    """A unit-of-work retry (a conflict the database reported) writes the Binary again: over HTTP with the
    blob stored before the transaction, in process with the body read again from its start."""
    attempts: list[str] = []

    def conflict_once(event: WriteEvent, _repo: Repository | None) -> None:
        if event.resource_type == "Binary" and event.resource_id not in attempts:
            attempts.append(str(event.resource_id))
            raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed (injected)"))

    big = os.urandom(3 * 1024 * 1024)  # larger than the adapter keeps in memory: spooled to disk
    api.fhir.hooks.register(HookPoint.BEFORE_COMMIT, conflict_once)
    try:
        r = api.http.put("Binary/retried", content=big, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        req = FhirRequest("PUT", "Binary/in-process", headers={"content-type": "image/png"},
                          body_file=io.BytesIO(PNG), base_url=api.url, access=SYSTEM)
        assert api.fhir.handle(req).status == 201
    finally:
        api.fhir.hooks.unregister(HookPoint.BEFORE_COMMIT, conflict_once)
    assert attempts == ["retried", "in-process"]
    assert api.http.get("Binary/retried", headers=RAW).content == big
    assert_externalised(api, "retried", big)
    assert api.http.get("Binary/in-process", headers=RAW).content == PNG
    assert_externalised(api, "in-process", PNG)


def test_upload_limit_is_413(api: LiveServer) -> None:
    with binary_limit(api, 1000):
        r = api.http.post("Binary", content=os.urandom(2000), headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 413
        assert r.json()["issue"][0]["code"] == "too-costly"
        chunked = api.http.post("Binary", content=iter([os.urandom(600), os.urandom(600)]),
                                headers={"Content-Type": "application/octet-stream"})
        assert chunked.status_code == 413
        as_json = {"resourceType": "Binary", "contentType": "application/pdf",
                   "data": base64.b64encode(os.urandom(2000)).decode()}
        r = api.http.post("Binary", json=as_json, headers=FHIR_JSON)
        assert r.status_code == 413 and r.json()["issue"][0]["expression"] == ["Binary.data"]
        assert api.http.post("Binary", content=b"small", headers={"Content-Type": "text/plain"}).status_code == 201


def test_invalid_input(api: LiveServer) -> None:
    bad = api.http.post("Binary", json={"resourceType": "Binary", "contentType": "text/plain", "data": "abc!"},
                        headers=FHIR_JSON)
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["Binary.data"]
    # A client cannot point a Binary at stored content it never sent.
    rid = api.http.post("Binary", content=PDF, headers={"Content-Type": "application/pdf"}).json()["id"]
    stolen = stored_rows(api, rid)[0]["_data"]
    forged = {"resourceType": "Binary", "contentType": "application/pdf", "_data": stolen}
    r = api.http.post("Binary", json=forged, headers=FHIR_JSON)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Binary._data"]
    assert stolen["extension"][0]["url"] == BLOB_EXT
    as_xml = api.http.get(f"Binary/{rid}", headers={"Accept": "application/fhir+xml"})  # the resource, in XML
    assert as_xml.status_code == 200 and as_xml.headers["content-type"].startswith("application/fhir+xml")
    assert BLOB_EXT not in as_xml.text  # the store's pointer never leaves the server


def test_xml_document_is_raw_content(api: LiveServer) -> None:
    cda = b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3"/>'
    r = api.http.post("Binary", content=cda, headers={"Content-Type": "application/xml"})
    assert r.status_code == 201, r.text
    got = api.http.get(f"Binary/{r.json()['id']}", headers={"Accept": "application/xml"})
    assert got.status_code == 200 and got.content == cda and got.headers["content-type"] == "application/xml"
    # Outside Binary, application/xml asks for FHIR XML (here the OperationOutcome of a 404).
    missing = api.http.get("Patient/x", headers={"Accept": "application/xml"})
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/fhir+xml")


def generated(size: int, chunk: int, digest: Any) -> Iterator[bytes]:
    sent = 0
    while sent < size:
        block = os.urandom(min(chunk, size - sent))
        digest.update(block)
        sent += len(block)
        yield block


def test_large_upload_and_download_stream_in_bounded_memory(api: LiveServer) -> None:
    size = 64 * 1024 * 1024
    sent = hashlib.sha256()
    tracemalloc.start()
    try:
        started = time.monotonic()
        r = api.http.post("Binary", content=generated(size, 256 * 1024, sent),
                          headers={"Content-Type": "application/octet-stream"})
        upload_s = time.monotonic() - started
        upload_peak = tracemalloc.get_traced_memory()[1]
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        tracemalloc.reset_peak()
        received = hashlib.sha256()
        total = 0
        started = time.monotonic()
        with api.http.stream("GET", f"Binary/{rid}", headers=RAW) as download:
            assert download.status_code == 200
            assert download.headers["content-length"] == str(size)
            for chunk in download.iter_raw():
                received.update(chunk)
                total += len(chunk)
        download_s = time.monotonic() - started
        download_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == size and received.hexdigest() == sent.hexdigest()
    # The whole client + server path (one process) stays far below the 64 MiB it moved.
    print(f"\n64 MiB Binary ({api.backend.name}): upload {upload_s:.2f}s peak {upload_peak / 2**20:.1f} MiB, "
          f"download {download_s:.2f}s peak {download_peak / 2**20:.1f} MiB")
    assert upload_peak < 16 * 2**20, upload_peak
    assert download_peak < 16 * 2**20, download_peak
    assert len(str(stored_rows(api, rid))) < 2000


# --- S3-compatible store ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test-key",
                          aws_secret_access_key="test-secret")
    client.create_bucket(Bucket="fhir-binary")
    try:
        yield endpoint
    finally:
        server.stop()


@contextmanager
def live_server(fhir: FhirServer) -> Iterator[httpx.Client]:
    port = _free_port()
    server = uvicorn.Server(uvicorn_config(create_app(fhir.settings, fhir), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "uvicorn to start")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/fhir/", timeout=60) as http:
            yield http
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def test_s3_store_round_trip(backend: Backend, s3_endpoint: str) -> None:
    settings = backend.settings.model_copy(update={
        "binary_store_url": f"s3://fhir-binary/{backend.name}?endpoint={s3_endpoint}&region=us-east-1",
        "s3_access_key_id": SecretStr("test-key"), "s3_secret_access_key": SecretStr("test-secret")})
    fhir = FhirServer(settings, backend.engine)
    big = os.urandom(20 * 1024 * 1024 + 17)  # above boto3's 8 MiB multipart threshold
    with live_server(fhir) as http:
        r = http.post("Binary", content=big, headers={"Content-Type": "application/dicom"})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        got = http.get(f"Binary/{rid}", headers=RAW)
        assert got.status_code == 200 and got.content == big
        assert got.headers["content-type"] == "application/dicom"
        small = {"resourceType": "Binary", "contentType": "text/plain",
                 "data": base64.b64encode(b"hello s3").decode()}
        rid2 = http.post("Binary", json=small, headers=FHIR_JSON).json()["id"]
        assert base64.b64decode(http.get(f"Binary/{rid2}", headers={"Accept": "application/fhir+json"})
                                .json()["data"]) == b"hello s3"
    sha = hashlib.sha256(big).hexdigest()
    store = fhir.binary.store
    head = store.client.head_object(Bucket="fhir-binary", Key=f"{backend.name}/{sha}")  # type: ignore[attr-defined]
    assert head["ContentLength"] == len(big)
    store.delete(sha)
    assert not store.exists(sha)


def test_s3_store_protocol(s3_endpoint: str) -> None:
    store = S3BlobStore.from_settings(Settings(
        binary_store_url=f"s3://fhir-binary/protocol?endpoint={s3_endpoint}&region=us-east-1",
        s3_access_key_id=SecretStr("test-key"), s3_secret_access_key=SecretStr("test-secret")))
    data = os.urandom(100_000)
    blob = store.put(data[i:i + 7000] for i in range(0, len(data), 7000))
    assert blob.key == blob.sha256 == hashlib.sha256(data).hexdigest() and blob.size == len(data)
    assert store.put([data]) == blob  # the same bytes: one object
    listed = store.client.list_objects_v2(Bucket="fhir-binary", Prefix="protocol/")["Contents"]
    assert [o["Key"] for o in listed] == [f"protocol/{blob.key}"]
    assert b"".join(store.open(blob.key, chunk_size=4096)) == data
    with pytest.raises(FhirError):
        store.put([b"x" * 2000], max_bytes=1000)
    store.delete(blob.key)
    assert not store.exists(blob.key) and not store.exists("../etc")
    with pytest.raises(BlobMissing):
        store.open(blob.key)
