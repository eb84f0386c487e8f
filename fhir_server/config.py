"""Settings from the environment (prefix FHIR_), with safe embedded defaults."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_", env_file=".env", extra="ignore")

    environment: str = "local"  # local | test | production
    database_url: str = "sqlite:///data/fhir.sqlite3"
    # Public FHIR base URL; unset: derived from each request (Host header) + "/fhir".
    base_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    # Largest request body accepted for a FHIR resource or Bundle (Binary uploads stream and are capped apart).
    max_body_bytes: int = 64 * 1024 * 1024
    max_binary_bytes: int = 2 * 1024 * 1024 * 1024
    # Where Binary content lives: file://DIR (relative to the working directory, or file:///abs) or
    # s3://bucket[/prefix]?endpoint=http://host:9000&region=us-east-1 (any S3-compatible server).
    binary_store_url: str = "file://data/binary"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    default_page_size: int = 20
    max_page_size: int = 1000
    outbox_poll_seconds: float = 1.0
    # Run the in-process outbox dispatcher inside `serve` (the embedded default needs no worker).
    outbox_dispatcher: bool = True
    db_pool_size: int = 10

    @model_validator(mode="after")
    def _production_needs_postgres(self) -> Settings:
        if self.environment == "production" and self.database_url.startswith("sqlite"):
            raise ValueError("FHIR_ENVIRONMENT=production requires a PostgreSQL FHIR_DATABASE_URL")
        return self

    def sqlite_path(self) -> Path | None:
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix):
            rest = self.database_url[len(prefix):]
            return None if rest in ("", ":memory:") else Path(rest)
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
