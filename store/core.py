"""`open_store` and `Store`: one engine and one sessionmaker per process, sessions on demand.

A Store owns the engine; callers own their transactions through `store.session()`, which
commits on success and rolls back on error. Sessions and the ORM objects they load stay on
the thread that opened them: hand ids to other threads, and let each open its own session.
`expire_on_commit` is off, so attributes loaded inside a session can still be read after it
closes (lazy ones, such as Document.text, cannot).
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator, Optional, Union

from sqlalchemy import Engine, exc
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from . import migrate
from .db import (check_sqlite_file, create_store_engine, describe, read_only_engine,
                 resolve_url, sqlite_path, translate)
from .errors import StoreError


class Store:
    """An open store: `.engine`, `.url`, `.sessionmaker`, `.session()`, `.close()`."""

    def __init__(self, engine: Engine, url: URL) -> None:
        self.engine = engine
        self.url = url
        # the machine documents recorded through this store come from (several agents on
        # several machines may feed one store): this host's name unless the agent names it
        self.origin = socket.gethostname()
        self.sessionmaker = sessionmaker(engine, expire_on_commit=False)
        self._read_sessionmaker = sessionmaker(read_only_engine(engine), expire_on_commit=False)

    @property
    def path(self) -> Optional[Path]:
        """The SQLite file, or None for a server database."""
        return sqlite_path(self.url)

    def describe(self) -> str:
        """The database as messages name it: the file, or the URL without its password."""
        return describe(self.url)

    @contextlib.contextmanager
    def session(self, *, read_only: bool = False) -> Iterator[Session]:
        """A session inside a transaction: commits when the block ends, rolls back on error.

        read_only=True is for blocks that only read: on SQLite the transaction then begins
        DEFERRED and never takes the write lock (write sessions begin IMMEDIATE, so they
        queue for the lock at the start instead of failing halfway).
        """
        maker = self._read_sessionmaker if read_only else self.sessionmaker
        try:
            with maker.begin() as s:
                s.info["origin"] = self.origin
                yield s
        except exc.OperationalError as e:  # locked, read-only, disk full, connection lost
            raise translate(e, self.url) from e

    def schema_state(self) -> tuple[tuple[str, ...], str]:
        """(revisions the database is at, newest revision this code knows)."""
        try:
            return migrate.schema_state(self.engine, self.describe())
        except exc.DBAPIError as e:
            raise translate(e, self.url) from e

    def upgrade(self) -> tuple[tuple[str, ...], str]:
        """Apply pending migrations; returns (revisions before, head)."""
        try:
            return migrate.upgrade(self.engine, self.describe())
        except exc.DBAPIError as e:
            raise translate(e, self.url) from e

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.describe()!r})"


def open_store(data_dir: Union[str, os.PathLike, None] = None,
               url: Union[str, URL, None] = None, *, upgrade: bool = True) -> Store:
    """Open the store: `url`, else $CLLM_DATABASE_URL, else `<data_dir>/cllm.sqlite3`
    (data_dir is created if missing).

    Applies pending migrations unless upgrade=False. Either way a database that cannot be
    used (not a database, read-only, schema newer than this code, server unreachable)
    raises a StoreError subclass that names it and says what to do.
    """
    resolved = resolve_url(data_dir, url)
    path = sqlite_path(resolved)
    if path is not None:
        check_sqlite_file(path)
    store = Store(create_store_engine(resolved), resolved)
    try:
        if upgrade:
            store.upgrade()
        else:
            store.schema_state()
    except (StoreError, exc.SQLAlchemyError):
        store.close()
        raise
    return store
