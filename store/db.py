"""The engine factory: which database a store uses, and how every connection to it is set up.

URL precedence: an explicit URL, then $CLLM_DATABASE_URL, else the SQLite file
`<data_dir>/cllm.sqlite3`. SQLite connections get `foreign_keys=ON`, WAL, `synchronous=NORMAL`
and a busy timeout on every connect, and transactions opened with an explicit `BEGIN` (write
sessions `BEGIN IMMEDIATE`, so a read-then-write transaction waits for the lock instead of
failing with "database is locked"). This is the only module that speaks SQLite-specific SQL;
everything else in the store is portable. Driver errors are translated here into the
store's named errors, each naming the database and saying what to do.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Iterator, Optional, Union

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url

from .errors import (DatabaseUnavailableError, NotADatabaseError, ReadOnlyDatabaseError,
                     StoreError)

ENV_URL = "CLLM_DATABASE_URL"
SQLITE_FILENAME = "cllm.sqlite3"
BUSY_TIMEOUT_MS = 30_000  # a writer waits this long for the lock before giving up
SQLITE_HEADER = b"SQLite format 3\x00"
BEGIN_OPTION = "cllm_sqlite_begin"  # execution option: "IMMEDIATE" (default) or "DEFERRED"


def resolve_url(data_dir: Union[str, os.PathLike, None] = None,
                url: Union[str, URL, None] = None) -> URL:
    """The database URL: `url`, else $CLLM_DATABASE_URL, else `<data_dir>/cllm.sqlite3`."""
    raw = url if url is not None else (os.environ.get(ENV_URL) or None)
    if raw is not None:
        try:
            return make_url(raw)
        except exc.ArgumentError as e:
            raise StoreError(f"invalid database URL {str(raw)!r}: {e}",
                             "use a SQLAlchemy URL such as postgresql+psycopg://user:pw@host/db"
                             " or sqlite:////abs/path/cllm.sqlite3") from None
    if data_dir is None:
        raise StoreError("no data directory and no database URL given",
                         f"pass --data-dir, --database-url or set {ENV_URL}")
    return URL.create("sqlite", database=str(Path(data_dir).expanduser().resolve()
                                              / SQLITE_FILENAME))


def describe(url: URL) -> str:
    """How messages name a database: the file for SQLite, the URL without password otherwise."""
    path = sqlite_path(url)
    return str(path) if path is not None else url.render_as_string(hide_password=True)


def sqlite_path(url: URL) -> Optional[Path]:
    """The file behind a SQLite URL; None for other backends and in-memory databases."""
    if url.get_backend_name() != "sqlite":
        return None
    db = url.database or ""
    if db in ("", ":memory:") or db.startswith("file:") or url.query.get("mode") == "memory":
        return None
    return Path(db)


def make_private_dir(folder: Path) -> None:
    """Create `folder` (and its parents) if missing; the folder itself is made 0700 (its
    owner only, whatever the umask: chmod after mkdir). An existing folder keeps its mode."""
    folder = Path(folder)
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        return                          # made by another process meanwhile: theirs
    os.chmod(folder, 0o700)


def check_sqlite_file(path: Path) -> None:
    """Refuse, before SQLite sees it, a file that is not a database or cannot be written.

    Creates the folder if missing (0700: make_private_dir) and a missing database file as an
    empty one of mode 0600, which SQLite then fills; SQLite gives its `-wal` and `-shm` files
    the database file's mode, so the store is its owner's only. SQLite in WAL mode also
    needs to create those files next to the database, so the folder must be writable too.
    """
    folder = path.parent
    try:
        make_private_dir(folder)
    except OSError as e:
        raise StoreError(f"cannot create the data directory {folder}: {e.strerror}",
                         "pass a --data-dir you can write to") from None
    _create_private_file(path)
    if path.is_dir():
        raise NotADatabaseError(f"{path} is a directory, not a database file",
                                "move it aside or pass another --data-dir")
    if path.exists():
        try:
            with open(path, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
        except OSError as e:
            raise ReadOnlyDatabaseError(f"cannot read {path}: {e.strerror}",
                                        "fix its permissions or pass another --data-dir") from None
        if head and head != SQLITE_HEADER:
            raise NotADatabaseError(f"{path} is not an SQLite database",
                                    "move the file aside (a new store is created in its place)"
                                    " or pass another --data-dir")
        if not os.access(path, os.W_OK):
            raise ReadOnlyDatabaseError(f"{path} is read-only",
                                        f"make it writable (chmod u+w {path}) or pass another"
                                        " --data-dir")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ReadOnlyDatabaseError(f"{path}: its folder {folder} is read-only (SQLite needs to"
                                    " create -wal and -shm files there)",
                                    f"make {folder} writable or pass another --data-dir")


def _create_private_file(path: Path) -> None:
    """An empty file of mode 0600 at `path` unless something is there (then nothing)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError:
        return                 # there already (or not creatable): the checks below judge it
    try:
        os.fchmod(fd, 0o600)   # whatever the umask
    finally:
        os.close(fd)


def create_store_engine(url: URL) -> Engine:
    """A SQLAlchemy engine for `url`, SQLite connections set up as the module says."""
    try:
        if url.get_backend_name() == "sqlite":
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        return create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as e:     # a known dialect whose driver is not installed
        if url.get_backend_name() == "postgresql":
            raise StoreError(f"{describe(url)} needs the PostgreSQL driver {e.name}, which is "
                             "not installed",
                             "pip install 'crystalline-cllm[postgres]' (psycopg)") from None
        raise StoreError(f"{describe(url)} needs the driver {e.name}, which is not installed",
                         "install it, or use sqlite:///... (built in)") from None
    except exc.NoSuchModuleError as e:
        raise StoreError(f"unsupported database URL {describe(url)}: {e}",
                         "use sqlite:///... or postgresql+psycopg://...") from None


def read_only_engine(engine: Engine) -> Engine:
    """The same engine with SQLite transactions begun DEFERRED (readers never take the lock)."""
    return engine.execution_options(**{BEGIN_OPTION: "DEFERRED"})


def _sqlite_on_connect(dbapi_conn: sqlite3.Connection, _record) -> None:
    # The driver's own transaction handling defers BEGIN until the first write and breaks
    # SAVEPOINT; turn it off and emit BEGIN ourselves in _sqlite_on_begin.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")  # first: the others may wait
        cur.execute("PRAGMA foreign_keys = ON")
        _ensure_wal(cur)
        cur.execute("PRAGMA synchronous = NORMAL")
    finally:
        cur.close()


def _ensure_wal(cur: sqlite3.Cursor) -> None:
    """Switch the database file to WAL once. WAL is stored in the file, so this only does
    work on a new database; there, processes opening it at the same moment would race for
    the exclusive lock the switch needs, and a loser silently stays in rollback mode (where
    a later reader and writer can wait on each other until the busy timeout). The switch is
    therefore serialised across processes by a blocking flock on a sidecar file."""
    if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    path = next((row[2] for row in cur.execute("PRAGMA database_list") if row[1] == "main"), "")
    if not path:                                  # in-memory: WAL does not apply
        return
    try:
        import fcntl                              # POSIX only: elsewhere WAL is set unlocked
        lock = open(path + "-setup.lock", "a")
    except (ImportError, OSError):                # no flock, or a read-only folder
        cur.execute("PRAGMA journal_mode = WAL")
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # blocks until the holder has switched
        try:
            mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() == "wal":
                # done for good (later connections see WAL and never come here); a waiter
                # still holding the old file just finds WAL already set
                with contextlib.suppress(OSError):
                    os.unlink(path + "-setup.lock")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"database is locked (journal mode stayed {mode})")


def _sqlite_on_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(BEGIN_OPTION, "IMMEDIATE")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN DEFERRED")


def sqlite_pragmas(conn: Connection) -> dict[str, object]:
    """The connection's settings as SQLite reports them (for tests and `cllm db current`)."""
    names = ("foreign_keys", "journal_mode", "synchronous", "busy_timeout")
    return {n: conn.exec_driver_sql(f"PRAGMA {n}").scalar() for n in names}


@contextlib.contextmanager
def foreign_keys_deferred_for_migration(conn: Connection) -> Iterator[None]:
    """Around a migration: SQLite batch mode copies and drops tables, which enforced foreign
    keys would refuse, and the pragma cannot change inside a transaction. Turns enforcement
    off on this connection, then checks every key once before commit and turns it back on.
    A no-op on other backends. Call it before the connection's transaction begins.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.dbapi_connection
    raw.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys = ON")


def foreign_key_violations(conn: Connection) -> list[tuple]:
    """Rows violating a foreign key (SQLite's foreign_key_check); empty elsewhere."""
    if conn.dialect.name != "sqlite":
        return []
    return [tuple(r) for r in conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()]


def take_migration_lock(conn: Connection) -> None:
    """Serialise concurrent migrations of one database (transaction-scoped). SQLite's
    BEGIN IMMEDIATE already does; PostgreSQL takes an advisory lock."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242417)")


def translate(e: BaseException, url: URL) -> StoreError:
    """A driver error met while opening or using the store, as a named StoreError."""
    where = describe(url)
    orig = getattr(e, "orig", e)
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    low = text.lower()
    if url.get_backend_name() == "sqlite":
        if "not a database" in low or "malformed" in low:
            return NotADatabaseError(f"{where} is not a usable SQLite database ({text})",
                                     "move the file aside (a new store is created in its"
                                     " place) or pass another --data-dir")
        if "readonly" in low or "read-only" in low:
            return ReadOnlyDatabaseError(f"{where} is read-only ({text})",
                                         "make the file and its folder writable or pass"
                                         " another --data-dir")
        if "unable to open" in low:
            return StoreError(f"cannot open {where} ({text})",
                              "check that its folder exists and is writable")
        if "locked" in low:
            return StoreError(f"{where} stayed locked for {BUSY_TIMEOUT_MS // 1000} s ({text})",
                              "another process holds a long write transaction; retry later")
        return StoreError(f"{where}: {text}", "check the database file")
    if isinstance(e, exc.OperationalError) or "connect" in low:
        return DatabaseUnavailableError(f"cannot use {where}: {text}",
                                        f"check that the server is running and the URL"
                                        f" (--database-url / {ENV_URL}) is right")
    return StoreError(f"{where}: {text}", "check the database and its permissions")
