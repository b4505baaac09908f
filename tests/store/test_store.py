"""The store's engine factory, migrations and failure modes, on SQLite and PostgreSQL.

Opening: URL precedence, SQLite pragmas read back from live connections, write sessions
taking the lock at BEGIN. Migrations: upgrade from empty, the models match the migrated
schema. Refusals: a file that is not a database, a read-only one, a schema newer than the
code, an unreachable server; each a one-line error naming the database. `cllm db`.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import stat
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy.exc import IntegrityError

from store import (DatabaseUnavailableError, NotADatabaseError, ReadOnlyDatabaseError,
                   SchemaTooNewError, StoreError, open_store)
from agent.cli.db import db
from store.db import BUSY_TIMEOUT_MS, read_only_engine, sqlite_pragmas
from store.documents import add_document, content_sha256
from store.migrate import head_revision
from store.models import Base, Document

TABLES = {"crawl_targets", "documents", "vocab_entries", "cycles", "step_metrics",
          "eval_results", "checkpoints", "fetched_urls"}


def one_line(e: BaseException) -> str:
    line = e.one_line()
    assert "\n" not in line and "hint:" in line
    return line


# --------------------------------------------------------------------------- opening

def test_default_is_a_sqlite_file_in_the_data_dir_created_if_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)
    data_dir = tmp_path / "a" / "b"
    with open_store(data_dir) as st:
        assert st.engine.dialect.name == "sqlite"
        assert st.path == data_dir / "cllm.sqlite3"
        with st.session() as s:
            add_document(s, uri="u", source="s", text="kept")
    assert (data_dir / "cllm.sqlite3").read_bytes().startswith(b"SQLite format 3\x00")


def test_a_new_data_directory_and_its_store_are_private_whatever_the_umask(tmp_path,
                                                                           monkeypatch):
    """On a shared machine other users cannot read what the agent learned: a data directory
    the store creates is 0700, the database and its -wal and -shm files 0600, even under
    umask 000; an existing folder keeps its mode."""
    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)
    old = os.umask(0)
    try:
        data_dir = tmp_path / "new" / "data"
        with open_store(data_dir) as st:
            with st.session() as s:
                add_document(s, uri="u", source="s", text="private")
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data_dir.iterdir()}
        mine = tmp_path / "mine"
        mine.mkdir(mode=0o755)
        open_store(mine).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert modes == {"cllm.sqlite3": 0o600, "cllm.sqlite3-wal": 0o600, "cllm.sqlite3-shm": 0o600}
    assert stat.S_IMODE(mine.stat().st_mode) == 0o755
    assert stat.S_IMODE((mine / "cllm.sqlite3").stat().st_mode) == 0o600


def test_url_precedence_explicit_then_env_then_data_dir(store_target, tmp_path, monkeypatch):
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}"
    env_url = store_target.url or elsewhere
    monkeypatch.setenv("CLLM_DATABASE_URL", env_url)
    with open_store(store_target.data_dir) as st:  # the environment wins over the data dir
        assert st.engine.dialect.name == store_target.backend
        assert not store_target.sqlite_file.exists()
    explicit = tmp_path / "explicit.sqlite3"
    with open_store(store_target.data_dir, f"sqlite:///{explicit}") as st:  # explicit wins
        assert st.path == explicit
    assert explicit.exists()


def test_sqlite_pragmas_are_set_on_every_connection(tmp_path):
    with open_store(tmp_path) as st:
        expected = {"foreign_keys": 1, "journal_mode": "wal", "synchronous": 1,
                    "busy_timeout": BUSY_TIMEOUT_MS}
        readers = read_only_engine(st.engine)  # write connections would queue for the lock
        with readers.connect() as c1, readers.connect() as c2:  # two live pool members
            assert sqlite_pragmas(c1) == expected
            assert sqlite_pragmas(c2) == expected
        st.engine.dispose()  # a brand-new connection gets them too
        with st.session(read_only=True) as s:
            assert sqlite_pragmas(s.connection()) == expected


def test_sqlite_write_sessions_take_the_lock_at_begin_read_sessions_do_not(tmp_path):
    with open_store(tmp_path) as st:
        other = sqlite3.connect(st.path, timeout=0, isolation_level=None)
        with st.session() as s:
            s.execute(sa.select(1))  # BEGIN IMMEDIATE: this transaction holds the write lock
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released at commit
        other.execute("ROLLBACK")
        with st.session(read_only=True) as s:
            s.execute(sa.select(1))
            other.execute("BEGIN IMMEDIATE")  # a reader does not block writers
            other.execute("ROLLBACK")
        other.close()


def test_foreign_keys_are_enforced(store):
    with pytest.raises(IntegrityError):
        with store.session() as s:
            add_document(s, uri="u", source="s", text="x", target_id=12345)
    with store.session(read_only=True) as s:
        assert s.scalar(sa.select(sa.func.count(Document.id))) == 0  # rolled back


def test_session_commits_on_success_and_rolls_back_on_error(store):
    with store.session() as s:
        add_document(s, uri="a", source="s", text="first")
    with pytest.raises(RuntimeError):
        with store.session() as s:
            add_document(s, uri="b", source="s", text="second")
            raise RuntimeError("boom")
    with store.session(read_only=True) as s:
        assert [d.uri for d in s.scalars(sa.select(Document))] == ["a"]


# ------------------------------------------------------------------------- migrations

def test_migrations_upgrade_from_empty_and_match_the_models(store_target):
    with store_target.open(upgrade=False) as st:
        assert st.schema_state() == ((), head_revision())
        assert not TABLES & set(sa.inspect(st.engine).get_table_names())
        assert st.upgrade() == ((), head_revision())
        assert st.upgrade() == ((head_revision(),), head_revision())  # idempotent
        assert st.schema_state() == ((head_revision(),), head_revision())
        assert TABLES <= set(sa.inspect(st.engine).get_table_names())
        with st.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
            # ... and the comparison does see a drift: a model column missing from the schema
            drifted = sa.MetaData()
            for t in Base.metadata.tables.values():
                t.to_metadata(drifted)
            drifted.tables["documents"].append_column(sa.Column("extra", sa.Integer))
            diff = compare_metadata(ctx, drifted)
            assert [d[0] for d in diff] == ["add_column"] and diff[0][3].name == "extra"


def test_open_applies_migrations_and_reopen_keeps_data(store_target):
    with store_target.open() as st:
        with st.session() as s:
            add_document(s, uri="u", source="s", text="survives a reopen")
    with store_target.open() as st:
        assert st.schema_state()[0] == (head_revision(),)
        with st.session(read_only=True) as s:
            assert s.scalars(sa.select(Document.uri)).all() == ["u"]


def test_a_store_at_0001_with_rows_upgrades_and_keeps_working(store_target):
    """0002 adds documents.duplicate_of_id and fetched_urls.depth, backfilled from the reasons
    0001-era code wrote; the rows then behave as rows written by the new code."""
    from alembic import command

    from store.documents import is_duplicate, mark_deleted_under, record_text
    from store.migrate import alembic_config
    from store.frontier import queued_under, url_key

    with store_target.open(upgrade=False) as st:
        with st.engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0001")
            now = "CURRENT_TIMESTAMP"
            conn.execute(sa.text(
                "INSERT INTO documents (id, uri, source, sha256, status, reason, first_seen, updated) VALUES"
                f" (1, 'file:///a', 's', :sha_old, 'skipped', 'superseded by document 2 before training', {now}, {now}),"
                f" (2, 'file:///a', 's', :sha, 'pending', NULL, {now}, {now}),"
                f" (3, 'file:///b', 's', NULL, 'skipped', 'duplicate content of file:///a', {now}, {now}),"
                f" (4, 'file:///c', 's', NULL, 'skipped', 'binary content (NUL byte at offset 0)', {now}, {now}),"
                f" (5, 'file:///d', 's', NULL, 'skipped', 'duplicate content of file:///gone', {now}, {now})"),
                {"sha_old": "0" * 64, "sha": content_sha256("shared words")})
            for i, (url, status, reason) in enumerate([
                    ("https://a.example/", "fetched", None),
                    ("https://a.example/p1", "queued", "found at depth 1"),
                    ("https://a.example/p2", "queued", "found at depth 12"),
                    ("https://a.example/p3", "failed", "HTTP 503 after 2 attempts")], start=1):
                conn.execute(sa.text(
                    "INSERT INTO fetched_urls (id, url, url_sha256, status, reason, fetched_at)"
                    f" VALUES (:i, :u, :k, :s, :r, {now})"), {"i": i, "u": url, "k": url_key(url), "s": status,
                                                           "r": reason})
        assert st.schema_state()[0] == ("0001",)
    with store_target.open() as st:  # migrates to head
        assert st.schema_state()[0] == (head_revision(),)
        with st.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                    Base.metadata) == []
            assert dict(conn.execute(sa.text("SELECT id, duplicate_of_id FROM documents")).all()) == {
                1: None, 2: None, 3: 2, 4: None, 5: None}
            assert dict(conn.execute(sa.text("SELECT id, depth FROM fetched_urls")).all()) == {
                1: None, 2: 1, 3: 12, 4: None}
            assert conn.execute(sa.text("SELECT reason FROM fetched_urls WHERE id = 2")).scalar() == (
                "found at depth 1")  # reasons are kept for history
        with st.session() as s:
            assert queued_under(s, "https://a.example", max_depth=2) == [("https://a.example/p1", 1)]
            assert is_duplicate(s, "file:///b")
            deleted = mark_deleted_under(s, "file:///a")  # the backfilled link finds the heir
            assert (deleted.n_rows, deleted.heirs) == (2, ["file:///b"])
            assert record_text(s, uri="file:///b", source="s", text="shared words").outcome == "restored"


def test_a_store_at_0005_keeps_one_live_version_per_uri_after_upgrading(store_target):
    """0006 (issue 14): a version trained by the cycle that ran when a newer one arrived,
    left "skipped before training", and older versions left learning or trained beside a
    newer one, become deleted "superseded ... after training"; the rest is untouched."""
    from alembic import command

    from store.documents import replay_sample
    from store.migrate import alembic_config

    with store_target.open(upgrade=False) as st:
        with st.engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0005")
            conn.execute(sa.text("INSERT INTO cycles (id, trigger, status, started, docs_new,"
                                 " docs_replayed, tokens, steps, skipped_steps) VALUES"
                                 " (1, 'tokens', 'completed', CURRENT_TIMESTAMP, 1, 0, 10, 1, 0)"))
            rows = [  # id, uri, status, reason, cycle, trained bytes, minutes ago updated
                (1, "file:///a", "skipped", "superseded by document 2 before training", 1, 40, 9),
                (2, "file:///a", "pending", None, None, 0, 8),
                (3, "file:///b", "trained", None, 1, 90, 7),
                (4, "file:///b", "learning", None, 1, 20, 6),
                (5, "file:///b", "pending", None, None, 0, 5),
                (6, "file:///c", "skipped", "superseded by document 7 before training", None, 0, 4),
                (7, "file:///c", "trained", None, 1, 50, 3),
                (8, "file:///d", "trained", None, 1, 50, 2)]
            for i, uri, status, reason, cyc, tb, ago in rows:
                conn.execute(sa.text(
                    "INSERT INTO documents (id, uri, source, sha256, status, reason, cycle_id,"
                    " trained_bytes, first_seen, updated) VALUES (:i, :u, 's', :sha, :st, :r, :c,"
                    " :tb, :t, :t)"), {"i": i, "u": uri, "sha": f"{i:064d}", "st": status, "r": reason,
                                       "c": cyc, "tb": tb,
                                       "t": dt.datetime(2026, 12, 1, 12, 0) - dt.timedelta(minutes=ago)})
    with store_target.open() as st:
        with st.session() as s:
            got = {d.id: (d.status, d.reason) for d in s.scalars(sa.select(Document))}
            assert got == {
                1: ("deleted", "superseded by document 2 after training"), 2: ("pending", None),
                3: ("deleted", "superseded by document 5 after training"),
                4: ("deleted", "superseded by document 5 after training"), 5: ("pending", None),
                6: ("skipped", "superseded by document 7 before training"), 7: ("trained", None),
                8: ("trained", None)}
            assert sorted(d.id for d in replay_sample(s, 10, seed=0)) == [7, 8]


def test_tables_not_made_by_cllm_are_refused(store_target):
    with store_target.open(upgrade=False) as st:
        with st.engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE documents (id INTEGER PRIMARY KEY)")
    with pytest.raises(StoreError, match="no schema version") as e:
        store_target.open()
    one_line(e.value)


# -------------------------------------------------------------------------- refusals

def stamp(st, revision: str) -> None:
    with st.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_schema_newer_than_the_code_is_refused(store_target):
    with store_target.open() as st:
        stamp(st, "9999future")
        where = st.describe()
    for upgrade in (True, False):
        with pytest.raises(SchemaTooNewError) as e:
            store_target.open(upgrade=upgrade)
        line = one_line(e.value)
        assert where in line and "9999future" in line and "upgrade cllm" in line
    if store_target.backend == "postgresql":
        assert "cllm:cllm@" not in where and "***" in where  # no password in messages


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    (tmp_path / "cllm.sqlite3").write_bytes(b"these are my notes, not a database\n" * 50)
    with pytest.raises(NotADatabaseError) as e:
        open_store(tmp_path)
    line = one_line(e.value)
    assert str(tmp_path / "cllm.sqlite3") in line and "move the file aside" in line


def test_a_corrupted_database_behind_a_valid_header_is_refused(tmp_path):
    (tmp_path / "cllm.sqlite3").write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    with pytest.raises(NotADatabaseError) as e:
        open_store(tmp_path)
    assert str(tmp_path / "cllm.sqlite3") in one_line(e.value)


def test_a_directory_in_place_of_the_database_is_refused(tmp_path):
    (tmp_path / "cllm.sqlite3").mkdir()
    with pytest.raises(NotADatabaseError, match="is a directory"):
        open_store(tmp_path)


def _as_unprivileged(fn) -> str:
    """Run fn() where permissions apply: as is for a normal user; in a forked child that
    drops to nobody when running as root (root ignores file modes). Returns fn's string."""
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            out = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = f"child raised {e!r}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def _open_error(data_dir) -> str:
    try:
        open_store(data_dir).close()
    except ReadOnlyDatabaseError as e:
        return "ReadOnlyDatabaseError: " + one_line(e)
    return "opened"


@pytest.fixture
def world_dir():
    """A scratch folder that an unprivileged user can reach (pytest's tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix="cllm-store-test-")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path)


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_database_is_refused(world_dir, monkeypatch, what):
    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)
    data_dir = world_dir / "ro"
    open_store(data_dir).close()
    db_file = data_dir / "cllm.sqlite3"
    assert sorted(p.name for p in data_dir.iterdir()) == ["cllm.sqlite3"]  # WAL files gone
    if what == "file":
        os.chmod(db_file, 0o444)
        os.chmod(data_dir, 0o777)
    else:
        os.chmod(db_file, 0o666)
        os.chmod(data_dir, 0o555)
    try:
        out = _as_unprivileged(lambda: _open_error(data_dir))
    finally:
        os.chmod(data_dir, 0o755)
        os.chmod(db_file, 0o644)
    assert out.startswith("ReadOnlyDatabaseError: "), out
    assert str(db_file) in out and "read-only" in out and "writable" in out


def test_an_unreachable_server_is_one_line_without_the_password():
    with pytest.raises(DatabaseUnavailableError) as e:
        open_store(url="postgresql+psycopg://me:secret@127.0.0.1:1/nothing")
    line = one_line(e.value)
    assert "127.0.0.1:1/nothing" in line and "secret" not in line


def test_an_invalid_url_is_one_line():
    with pytest.raises(StoreError) as e:
        open_store(url="not a url")
    assert "invalid database URL" in one_line(e.value)


# ------------------------------------------------------------------------------- CLI

def db_args(target) -> list[str]:
    return ["--data-dir", str(target.data_dir)] + (
        ["--database-url", target.url] if target.url else [])


def test_cli_db_upgrade_and_current(store_target):
    args = db_args(store_target)
    r = CliRunner().invoke(db, ["current", *args, "--json"], catch_exceptions=False)
    if store_target.backend == "sqlite":   # reading never creates the file: no store yet
        assert r.exit_code == 1 and "no store in" in r.output, r.output
        assert not store_target.sqlite_file.exists()
    else:                                  # an empty database on the server
        assert r.exit_code == 0, r.output
        info = json.loads(r.output)
        assert info["revision"] is None and not info["up_to_date"]
        assert info["backend"] == store_target.backend
    r = CliRunner().invoke(db, ["upgrade", *args], catch_exceptions=False)
    assert r.exit_code == 0 and f"to revision {head_revision()}" in r.output
    r = CliRunner().invoke(db, ["upgrade", *args], catch_exceptions=False)
    assert r.exit_code == 0 and "already at revision" in r.output
    r = CliRunner().invoke(db, ["current", *args], catch_exceptions=False)
    assert r.exit_code == 0 and "up to date" in r.output
    info = json.loads(CliRunner().invoke(db, ["current", *args, "--json"]).output)
    assert info["up_to_date"] and info["backend"] == store_target.backend


def test_cli_errors_are_one_line_with_a_hint(store_target):
    with store_target.open() as st:
        stamp(st, "9999future")
    r = CliRunner().invoke(db, ["upgrade", *db_args(store_target)])
    assert r.exit_code == 1      # a runtime failure (2 is for usage errors)
    assert r.output.count("\n") == 1 and "hint:" in r.output and "Traceback" not in r.output
    assert "9999future" in r.output


def test_cllm_has_the_db_group():
    from agent.cli import main
    assert main.commands["db"] is db
