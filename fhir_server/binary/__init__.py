"""Binary content outside the resource tables: blob stores (file system, S3) and the Binary interactions."""

from fhir_server.binary.service import BinaryStorage
from fhir_server.binary.store import BlobStore, FileBlobStore, StoredBlob, open_store

__all__ = ["BinaryStorage", "BlobStore", "FileBlobStore", "StoredBlob", "open_store"]
