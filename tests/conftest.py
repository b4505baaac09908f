"""Shared fixtures.

Store: every store test runs twice, against a SQLite file and against a real PostgreSQL
server named by $CLLM_TEST_POSTGRES_URL (`source .ci/postgres.sh` starts one and sets it).
Each PostgreSQL test gets a fresh schema, dropped after it; without the variable the
PostgreSQL half is skipped and says why.
"""
from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path
from typing import Optional

import pytest

PG_ENV = "CLLM_TEST_POSTGRES_URL"


@pytest.fixture(autouse=True)
def _no_real_home(tmp_path_factory, monkeypatch):
    """No test reads or writes the real home: HOME and the XDG data and config homes (where
    the default data directory and the user config file live, agent/datadir.py) are empty
    temporary folders, and no CLLM_* location from the caller's environment leaks in."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name in ("CLLM_DATA_DIR", "CLLM_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    yield home


@pytest.fixture(autouse=True)
def _foreground_agents(monkeypatch):
    """Agents the tests start through the command line train at normal priority and never
    pause on battery (`cllm agent`'s defaults are low and on): under parallel test processes
    a low-priority trainer would wait on its neighbours, and on a laptop running on battery
    every agent test would wait for mains power. The tests of those features ask for them."""
    monkeypatch.setenv("CLLM_PRIORITY", "normal")
    monkeypatch.setenv("CLLM_PAUSE_ON_BATTERY", "false")


@dataclasses.dataclass
class StoreTarget:
    """An empty database for one test: `data_dir` always, `url` for PostgreSQL."""

    backend: str  # "sqlite" or "postgresql"
    data_dir: Path
    url: Optional[str]

    def open(self, **kwargs):
        from store import open_store
        return open_store(self.data_dir, self.url, **kwargs)

    @property
    def sqlite_file(self) -> Path:
        return self.data_dir / "cllm.sqlite3"


@pytest.fixture(scope="session")
def _pg_admin():
    url = os.environ.get(PG_ENV)
    if not url:
        yield None
        return
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool
    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request, tmp_path, monkeypatch) -> StoreTarget:
    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)
    data_dir = tmp_path / "data"
    if request.param == "sqlite":
        yield StoreTarget("sqlite", data_dir, None)
        return
    admin = request.getfixturevalue("_pg_admin")
    if admin is None:
        pytest.skip(f"PostgreSQL half: ${PG_ENV} is not set (source .ci/postgres.sh)")
    from sqlalchemy.engine import make_url
    schema = f"cllm_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = (make_url(os.environ[PG_ENV]).update_query_dict({"options": f"-csearch_path={schema}"})
           .render_as_string(hide_password=False))
    try:
        yield StoreTarget("postgresql", data_dir, url)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql("SET lock_timeout = '20s'")
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store(store_target):
    """An open, migrated store on each backend."""
    st = store_target.open()
    try:
        yield st
    finally:
        st.close()
