"""Blob stores: where Binary content lives, outside the resource tables.

Keys are content addresses (the SHA-256 of the bytes, hex), so storing the same bytes twice keeps one
blob, a retried write stores nothing new, and a write whose transaction rolls back leaves at worst an
unreferenced blob (never a resource pointing at missing bytes). Blobs are never overwritten in place:
every version in a Binary's history keeps the key it was written with.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from fhir_server.errors import TOO_COSTLY, FhirError

if TYPE_CHECKING:
    from fhir_server.config import Settings

CHUNK = 1024 * 1024  # read and write size: bounds the memory one transfer holds
KEY_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StoredBlob:
    key: str
    size: int
    sha256: str


class BlobMissing(Exception):
    """A key that the store does not hold."""


class BlobStore(Protocol):
    def put(self, chunks: Iterable[bytes], *, max_bytes: int | None = None) -> StoredBlob:
        """Store a byte stream (atomically: the key names either nothing or all the bytes)."""
        ...

    def open(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The bytes of ``key`` as chunks; raises BlobMissing before yielding if the key is unknown."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove a blob (absent keys are ignored). Only for sweeping blobs no version references."""
        ...


def check_key(key: str) -> str:
    if not KEY_RE.match(key):  # keys become file names and object keys: never let a path through
        raise BlobMissing(key)
    return key


def too_large(max_bytes: int) -> FhirError:
    return FhirError(413, TOO_COSTLY, f"The Binary content exceeds {max_bytes} bytes", ("Binary.data",))


def spool(chunks: Iterable[bytes], target: IO[bytes], max_bytes: int | None) -> tuple[int, str]:
    """Copy chunks into ``target``, hashing as they pass; returns (size, sha256 hex)."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise too_large(max_bytes)
        digest.update(chunk)
        target.write(chunk)
    return size, digest.hexdigest()


def file_chunks(f: IO[bytes], chunk_size: int = CHUNK) -> Iterator[bytes]:
    while chunk := f.read(chunk_size):
        yield chunk


class FileBlobStore:
    """Blobs as files under ``root/ab/cd/<sha256>``, written to a temporary file and renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        check_key(key)
        return self.root / key[:2] / key[2:4] / key

    def put(self, chunks: Iterable[bytes], *, max_bytes: int | None = None) -> StoredBlob:
        tmp_dir = self.root / ".tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                size, sha = spool(chunks, f, max_bytes)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name that promises them
            final = self.path(sha)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, final)  # atomic; same bytes if it was already there
            _fsync_dir(final.parent)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return StoredBlob(sha, size, sha)

    def open(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        try:
            f = self.path(key).open("rb")
        except FileNotFoundError:
            raise BlobMissing(key) from None
        return _closing_chunks(f, chunk_size)

    def exists(self, key: str) -> bool:
        try:
            return self.path(key).is_file()
        except BlobMissing:
            return False

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def _closing_chunks(f: IO[bytes], chunk_size: int) -> Iterator[bytes]:
    with f:
        yield from file_chunks(f, chunk_size)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_root(url: str) -> Path:
    """``file://data/binary`` -> data/binary (relative to the working directory); ``file:///srv/b`` -> /srv/b."""
    rest = url.removeprefix("file://")
    if not rest:
        raise ValueError(f"FHIR_BINARY_STORE_URL {url!r} names no directory")
    return Path(rest)


def open_store(settings: Settings) -> BlobStore:
    url = settings.binary_store_url
    if url.startswith("file://"):
        return FileBlobStore(file_root(url))
    if url.startswith("s3://"):
        from fhir_server.binary.s3 import S3BlobStore

        return S3BlobStore.from_settings(settings)
    raise ValueError(f"FHIR_BINARY_STORE_URL must start with file:// or s3://, not {url.split(':')[0]}:")
