"""The file-system blob store and the base64 streaming helpers, without a server."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_server.binary.content import base64_chunks, decode_data, encoded_length, json_form, pointer, with_pointer
from fhir_server.binary.media import is_raw_write, is_read, wants_fhir
from fhir_server.binary.store import BlobMissing, FileBlobStore, StoredBlob, file_root, open_store
from fhir_server.config import Settings
from fhir_server.errors import FhirError


def test_put_open_round_trip_and_content_addressing(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    data = os.urandom(3 * 1024 * 1024 + 5)
    blob = store.put(data[i:i + 65536] for i in range(0, len(data), 65536))
    assert blob.size == len(data) and blob.key == blob.sha256 == hashlib.sha256(data).hexdigest()
    assert store.exists(blob.key)
    assert b"".join(store.open(blob.key)) == data
    assert all(len(c) <= 1024 * 1024 for c in store.open(blob.key))
    again = store.put([data])
    assert again == blob
    files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert files == [store.path(blob.key)]  # one blob, no temporary files left behind
    store.delete(blob.key)
    assert not store.exists(blob.key)
    with pytest.raises(BlobMissing):
        store.open(blob.key)
    store.delete(blob.key)  # deleting twice is fine


def test_failed_or_oversized_put_leaves_nothing(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)

    def broken() -> Iterator[bytes]:
        yield b"a" * 1000
        raise OSError("client went away")

    with pytest.raises(OSError):
        store.put(broken())
    with pytest.raises(FhirError) as exc:
        store.put([b"x" * 600, b"y" * 600], max_bytes=1000)
    assert exc.value.status == 413 and exc.value.issues[0].expression == ("Binary.data",)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert store.put([b"x" * 1000], max_bytes=1000).size == 1000


def test_keys_never_become_paths(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    (tmp_path / "secret").write_bytes(b"not a blob")
    for key in ("../secret", "/etc/passwd", "ab", "G" * 64, ""):
        assert not store.exists(key)
        with pytest.raises(BlobMissing):
            store.open(key)


def test_store_urls(tmp_path: Path) -> None:
    assert file_root("file://data/binary") == Path("data/binary")
    assert file_root("file:///srv/binary") == Path("/srv/binary")
    store = open_store(Settings(binary_store_url=f"file://{tmp_path}"))
    assert isinstance(store, FileBlobStore) and store.root == tmp_path
    with pytest.raises(ValueError):
        open_store(Settings(binary_store_url="ftp://host/x"))


@given(st.lists(st.binary(max_size=50), max_size=12))
def test_base64_chunks_equal_one_encoding(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    encoded = b"".join(base64_chunks(chunks))
    assert encoded == base64.b64encode(data)
    assert len(encoded) == encoded_length(len(data))
    assert b"".join(decode_data(encoded.decode())) == data


def test_decode_data_rejects_bad_base64_and_allows_whitespace() -> None:
    assert b"".join(decode_data("aGVs\nbG8=")) == b"hello"
    for bad in ("abc", "ab!d", "====", 42):
        with pytest.raises(FhirError) as exc:
            b"".join(decode_data(bad))
        assert exc.value.issues[0].expression == ("Binary.data",)


def test_pointer_replaces_data_and_json_form_puts_it_back() -> None:
    store_key = hashlib.sha256(b"hello").hexdigest()
    blob = StoredBlob(store_key, 5, store_key)
    resource = {"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8=",
                "_data": {"extension": [{"url": "http://example.org/x", "valueString": "kept"}]}}
    stored = with_pointer(resource, blob)
    assert "data" not in stored and pointer(stored) == blob
    assert stored["_data"]["extension"][0]["valueString"] == "kept"
    for pretty in (False, True):
        start, end = json_form(stored, has_data=True, pretty=pretty)
        shown = orjson.loads(start + b"aGVsbG8=" + end)
        assert shown["data"] == "aGVsbG8="
        assert shown["_data"] == {"extension": [{"url": "http://example.org/x", "valueString": "kept"}]}


def test_which_requests_are_raw() -> None:
    assert is_raw_write("POST", "Binary", "application/pdf")
    assert is_raw_write("PUT", "Binary/a1", "image/png; q=1")
    assert is_raw_write("POST", "Binary", "application/xml")  # a document, not FHIR XML
    assert not is_raw_write("POST", "Binary", "application/fhir+json")
    assert not is_raw_write("POST", "Binary", "application/json; charset=utf-8")
    assert not is_raw_write("POST", "Binary", "application/fhir+xml")
    assert not is_raw_write("POST", "Binary", None)
    assert not is_raw_write("POST", "Patient", "application/pdf")
    assert not is_raw_write("PUT", "Binary", "application/pdf")  # conditional update: FHIR JSON only
    assert is_read("GET", "Binary/a1") and is_read("HEAD", "Binary/a1/_history/2")
    assert not is_read("GET", "Binary") and not is_read("GET", "Binary/_history")
    assert not is_read("GET", "Binary/a1/_history")
    assert wants_fhir(None, "application/fhir+json") and wants_fhir("json", None)
    assert wants_fhir(None, "image/png, application/json;q=0.5")
    assert not wants_fhir(None, "*/*") and not wants_fhir(None, None) and not wants_fhir(None, "application/pdf")
