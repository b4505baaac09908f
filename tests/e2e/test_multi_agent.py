"""Several agents on one store (issue 17), in real subprocesses: two ingest agents ("alpha",
"beta") feed the store from their folders and one trainer learns what they record; a killed
ingest agent costs nothing; a killed trainer's lease passes to the next trainer, which
resumes from the store's latest checkpoint. On SQLite and on the real PostgreSQL server."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from sqlalchemy import select

from store.models import Cycle, Document
from tests.e2e.test_agent import AgentProc, drop

pytestmark = pytest.mark.slow

ROLE_ARGS = ["--lease-ttl", "3"]       # heartbeats every second: the trainer wakes fast


def shared_url(store_target) -> str:
    st = store_target.open()           # creates and migrates the database
    st.close()
    return store_target.url or f"sqlite:///{store_target.sqlite_file}"


def documents(store_target) -> list[Document]:
    st = store_target.open()
    try:
        with st.session() as s:
            return list(s.scalars(select(Document).order_by(Document.id)))
    finally:
        st.close()


def test_two_ingest_agents_and_a_trainer_then_a_killed_trainer_is_taken_over(store_target, tmp_path):
    url = shared_url(store_target)
    wa, wb = tmp_path / "alpha-notes", tmp_path / "beta-notes"
    wa.mkdir()
    wb.mkdir()
    trainer = AgentProc(tmp_path / "trainer", None, "--role", "train", "--database-url", url,
                        *ROLE_ARGS)
    trainer.wait_for(r"agent running")
    alpha = AgentProc(tmp_path / "alpha", wa, "--role", "ingest", "--machine", "alpha",
                      "--database-url", url, *ROLE_ARGS)
    beta = AgentProc(tmp_path / "beta", wb, "--role", "ingest", "--machine", "beta",
                     "--database-url", url, *ROLE_ARGS)
    alpha.wait_for(r"agent running")
    beta.wait_for(r"agent running")
    drop(wa, "a.txt", "alpha's notes about the crystal lattice. ")
    drop(wb, "b.txt", "beta's notes about twelve neighbours. ")
    trainer.wait_for(r"backlog learned")
    docs = documents(store_target)
    assert sorted((d.origin, d.status) for d in docs) == [("alpha", "trained"), ("beta", "trained")]
    assert not any("cycle" in line for line in alpha.log + beta.log if "completed" in line)

    # a killed ingest agent: the others go on
    alpha.p.kill()
    alpha.p.wait(timeout=30)
    drop(wb, "c.txt", "beta keeps feeding the store after alpha died. ")
    trainer.wait_for(r"backlog learned")
    assert [d.status for d in documents(store_target) if d.origin == "beta"] == ["trained"] * 2

    # a killed trainer: the next one takes the lease at once (its holder is dead) and
    # resumes from the latest checkpoint the store recorded
    trainer.p.send_signal(signal.SIGKILL)
    trainer.p.wait(timeout=30)
    drop(wb, "d.txt", "a new trainer learns what arrived after the old one died. ")
    second = AgentProc(tmp_path / "trainer-2", None, "--role", "train", "--database-url", url,
                       *ROLE_ARGS)
    line = second.wait_for(r"resumed from checkpoint|Error")
    assert "resumed from checkpoint" in line and str(tmp_path / "trainer") in line
    second.wait_for(r"backlog learned")
    assert beta.stop() == 0 and second.stop() == 0
    listed = json.loads(subprocess.run(
        [sys.executable, "-m", "agent", "history", "documents", "--data-dir", str(tmp_path / "x"),
         "--database-url", url, "--json"], capture_output=True, text=True, check=True).stdout)
    assert sorted(r["origin"] for r in listed) == ["alpha", "beta", "beta", "beta"]
    docs = documents(store_target)
    assert {d.status for d in docs} == {"trained"} and len(docs) == 4
    st = store_target.open()
    try:
        with st.session() as s:
            assert "running" not in {c.status for c in s.scalars(select(Cycle))}  # recovered
    finally:
        st.close()


def test_a_second_trainer_on_the_store_exits_3(store_target, tmp_path):
    url = shared_url(store_target)
    first = AgentProc(tmp_path / "one", None, "--role", "train", "--database-url", url, *ROLE_ARGS)
    first.wait_for(r"agent running")
    second = AgentProc(tmp_path / "two", None, "--role", "train", "--database-url", url,
                       *ROLE_ARGS)
    assert second.p.wait(timeout=60) == 3
    second._reader.join(timeout=10)
    assert "another agent is training this store" in "".join(second.log)
    assert first.stop() == 0
