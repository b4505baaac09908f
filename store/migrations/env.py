"""Alembic environment for the store, configured in code (no alembic.ini).

store.migrate hands over an open connection, already inside the transaction it commits,
through `config.attributes["connection"]`; offline (SQL script) mode is not used.
SQLite gets batch mode (`render_as_batch`), so ALTERs become copy-and-move.
"""
from alembic import context

from store.models import Base, UTCDateTime


def render_item(type_, obj, autogen_context):
    """Autogenerate writes plain SQLAlchemy types, so revisions never import the models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("store migrations run through store.migrate, which passes a connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    compare_type=True,
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()
