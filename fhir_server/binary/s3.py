"""An S3-compatible blob store (AWS S3, MinIO, Ceph RGW ...), through boto3.

``s3://bucket/optional/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1``; credentials from
FHIR_S3_ACCESS_KEY_ID / FHIR_S3_SECRET_ACCESS_KEY, else boto3's own chain (AWS_* variables, instance role).
The key is the SHA-256 of the content, which is only known once every byte has been read, so an upload is
first spooled to a local temporary file (hashing as it goes) and then sent with boto3's managed transfer
(multipart above 8 MiB). An S3 object appears whole or not at all, so no partial blob is ever visible.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from fhir_server.binary.store import CHUNK, BlobMissing, StoredBlob, check_key, spool

if TYPE_CHECKING:
    from fhir_server.config import Settings

SPOOL_IN_MEMORY = 1024 * 1024  # uploads up to this size never touch the local disk


class S3BlobStore:
    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        import boto3
        from botocore.config import Config

        parts = urlsplit(settings.binary_store_url)
        if not parts.netloc:
            raise ValueError("FHIR_BINARY_STORE_URL s3://... names no bucket")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        key_id = settings.s3_access_key_id
        secret = settings.s3_secret_access_key
        client = boto3.client(
            "s3",
            endpoint_url=query.get("endpoint") or None,
            region_name=query.get("region") or None,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            # Path-style addressing works with every S3-compatible server, virtual hosts need DNS.
            config=Config(s3={"addressing_style": query.get("addressing", "path")},
                          retries={"max_attempts": 5, "mode": "standard"}),
        )
        return cls(client, parts.netloc, parts.path)

    def object_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, chunks: Iterable[bytes], *, max_bytes: int | None = None) -> StoredBlob:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as f:
            size, sha = spool(chunks, f, max_bytes)
            if not self.exists(sha):
                f.seek(0)
                self.client.upload_fileobj(f, self.bucket, self.object_key(sha))
        return StoredBlob(sha, size, sha)

    def open(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"]
        except ClientError as exc:
            if _not_found(exc):
                raise BlobMissing(key) from None
            raise
        return _closing(body, chunk_size)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _not_found(exc):
                return False
            raise
        except BlobMissing:
            return False
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))


def _not_found(exc: Any) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _closing(body: Any, chunk_size: int) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(chunk_size)
    finally:
        body.close()
