"""Schema migrations: Alembic configured in code, so it works from an installed package.

`upgrade` brings a database to the newest revision this code knows, inside one transaction
(SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so concurrent starts migrate once.
A database stamped with a revision this code does not know was migrated by a newer cllm and
is refused with SchemaTooNewError. Writing new revisions is a developer task:

    python -m store.migrate revision -m "what changed"    # autogenerate against a scratch db
"""
from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path
from typing import Optional

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, inspect

from .db import (create_store_engine, foreign_key_violations,
                 foreign_keys_deferred_for_migration, read_only_engine, resolve_url,
                 take_migration_lock)
from .errors import SchemaTooNewError, StoreError
from .models import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(connection: Optional[Connection] = None) -> Config:
    """An Alembic Config with no ini file; env.py takes `connection` from its attributes."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code knows."""
    head = script_directory().get_current_head()
    assert head is not None, "store/migrations/versions holds no revision"
    return head


def current_revisions(conn: Connection) -> tuple[str, ...]:
    """The revisions the database is stamped with (empty for a fresh database)."""
    return tuple(MigrationContext.configure(conn).get_current_heads())


def check_known(revisions: tuple[str, ...], where: str) -> None:
    """Refuse a database stamped with a revision this code does not know (a newer cllm's)."""
    for rev in revisions:
        try:
            script_directory().get_revision(rev)
        except (CommandError, ResolutionError):
            raise SchemaTooNewError(
                f"{where} has schema revision {rev}, newer than this cllm knows"
                f" (it knows up to {head_revision()})",
                "upgrade cllm (pip install -U crystalline-cllm), or pass another --data-dir /"
                " --database-url") from None


def schema_state(engine: Engine, where: str) -> tuple[tuple[str, ...], str]:
    """(current revisions, head revision), after refusing a schema newer than the code."""
    with read_only_engine(engine).connect() as conn:
        current = current_revisions(conn)
    check_known(current, where)
    return current, head_revision()


def upgrade(engine: Engine, where: str) -> tuple[tuple[str, ...], str]:
    """Migrate to head if needed; returns (revisions before, head). Idempotent."""
    current, head = schema_state(engine, where)  # read-only: no write lock when up to date
    if current == (head,):
        return current, head
    with engine.connect() as conn:
        with foreign_keys_deferred_for_migration(conn):
            with conn.begin():
                take_migration_lock(conn)
                current = current_revisions(conn)  # another process may have migrated
                check_known(current, where)
                if current != (head,):
                    if not current:
                        _refuse_unversioned_tables(conn, where)
                    command.upgrade(alembic_config(conn), "head")
                    bad = foreign_key_violations(conn)
                    if bad:
                        raise StoreError(f"migrating {where} broke {len(bad)} foreign keys"
                                         f" (first: {bad[0]}); nothing was changed",
                                         "report this as a bug in the migration")
    return current, head


def _refuse_unversioned_tables(conn: Connection, where: str) -> None:
    ours = set(Base.metadata.tables)
    clash = sorted(ours & set(inspect(conn).get_table_names()))
    if clash:
        raise StoreError(f"{where} has tables named like the store's ({', '.join(clash)}) but"
                         " no schema version",
                         "it was not made by cllm: pass another --data-dir / --database-url")


def _autogenerate(message: str) -> None:
    """Write a new revision: migrate a scratch SQLite db to head, diff it with the models."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_store_engine(resolve_url(tmp))
        upgrade(engine, tmp)
        with engine.begin() as conn:
            command.revision(alembic_config(conn), message=message, autogenerate=True)
        engine.dispose()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "revision" and sys.argv[2] == "-m":
        _autogenerate(sys.argv[3])
    else:
        sys.exit(__doc__)
