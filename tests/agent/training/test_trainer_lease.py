"""The trainer lease in the agent (issue 14 item 5): a second agent pointed at the same
database from another data directory does not train; a process whose lease was taken over
stops and commits nothing."""
from __future__ import annotations

import os
import threading

import pytest
from sqlalchemy import select

from click.testing import CliRunner

from agent.cli import main
from agent.continuous_trainer import ContinuousTrainer
from agent.daemon import Agent, AgentConfig
from agent.training.trainer_lease import AgentLocked, TrainerLease
from agent.settings import TrainerSettings
from store import lease as store_lease, open_store
from store.errors import LeaseLostError
from store.models import Cycle, Lease
from tests.agent.test_continuous_trainer import SETTINGS, add_doc


def test_a_second_agent_on_the_same_database_does_not_train(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    watch = tmp_path / "watched"
    watch.mkdir()
    (watch / "x.txt").write_text("text that only one agent may learn. " * 20)
    store = open_store(a)
    try:
        with TrainerLease(store, a):         # agent A trains this store
            url = f"sqlite:///{a / 'cllm.sqlite3'}"
            second = Agent(AgentConfig(b, TrainerSettings(preset="tiny", workers=1),
                                       watch=(str(watch),), database_url=url, max_cycles=1))
            with pytest.raises(AgentLocked) as e:
                second.run()
            assert str(a) in str(e.value) and "another agent" in str(e.value)
            # `cllm status` of the second directory says who trains its store
            r = CliRunner().invoke(main, ["--database-url", url, "status", "--data-dir", str(b)])
            assert r.exit_code == 0, r.output
            assert f"trainer of this store: pid {os.getpid()}" in r.output and str(a) in r.output
        with store.session() as s:
            assert list(s.scalars(select(Cycle))) == []
            assert s.get(Lease, store_lease.TRAINER) is None     # released on exit
    finally:
        store.close()


def test_a_lost_lease_stops_the_heartbeat_and_fences_the_commit(store_target):
    store = store_target.open()
    data = store_target.data_dir
    lost = threading.Event()
    try:
        with TrainerLease(store, data, ttl_s=0.3, on_lost=lambda e: lost.set()) as held:
            tr = ContinuousTrainer(store, data, SETTINGS)
            tr.lease = held
            add_doc(store, "a", "lattice")
            assert tr.run_pending("tokens") is not None          # held: it commits
            with store.session() as s:                           # another agent takes over
                row = s.get(Lease, store_lease.TRAINER)
                row.holder, row.pid = "other-host:1:x", 1
            assert lost.wait(10), "the heartbeat did not notice the takeover"
            assert isinstance(held.lost, LeaseLostError)
            add_doc(store, "b", "spheres")
            with pytest.raises(LeaseLostError):
                tr.run_pending("tokens")
        with store.session() as s:
            assert sorted(s.scalars(select(Cycle.status))) == ["completed", "failed"]
            assert s.get(Lease, store_lease.TRAINER).holder == "other-host:1:x"
    finally:
        store.close()
