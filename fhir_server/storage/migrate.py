"""Apply the alembic migrations in ``migrations/`` to the configured database."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("migrations")))
    return cfg


def upgrade(engine: Engine, revision: str = "heads") -> None:
    # "heads": features add migrations on their own branches off a common parent; a later merge
    # revision joins them, and until then every branch still applies.
    from fhir_server.tenancy.engines import tenant_of

    cfg = alembic_config()
    tenant = tenant_of(engine)
    if tenant != "default":  # a tenant's schema or file: the platform's tables stay with the default one
        cfg.attributes["tenant"] = tenant
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
