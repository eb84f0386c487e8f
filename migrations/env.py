"""Alembic environment: the URL comes from the caller (fhir-server migrate) or FHIR_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from fhir_server.config import get_settings
from fhir_server.storage.database import make_engine
from fhir_server.storage.models import Base

config = context.config
target_metadata = Base.metadata


def run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = make_engine(get_settings())
    with engine.connect() as conn:
        run(conn)
