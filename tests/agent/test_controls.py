"""Controls users set in the store reach a running agent (issue 16): pausing ends the running
cycle at a step boundary and starts none until resumed; a crawl target added to the store
while the agent runs is crawled, and a watch root added is watched. In process, with a short lease so heartbeats come fast."""
from __future__ import annotations

import threading

from agent.continuous_trainer import ContinuousTrainer
from agent.crawler import Crawler
from agent.daemon import Agent, AgentConfig
from agent.inputs.ingest import Ingestor
from agent.settings import TrainerSettings
from store import controls, open_store
from store.models import TargetKind
from store.targets import add_target

TIMEOUT = 120


def wait_until(event: threading.Event, what: str) -> None:
    assert event.wait(TIMEOUT), f"timed out waiting for {what}"


def test_pause_resume_and_a_target_added_while_running(tmp_path, monkeypatch):
    data, watch, more = tmp_path / "data", tmp_path / "watched", tmp_path / "more"
    inbox = tmp_path / "new-inbox"
    for d in (watch, more, inbox):
        d.mkdir()
    (watch / "a.txt").write_text("the first file the agent learns. " * 40)
    (more / "b.txt").write_text("a folder added from the dashboard. " * 40)
    cycled, walked = threading.Event(), threading.Event()
    real_run, real_walk = ContinuousTrainer.run_pending, Crawler.walk

    def run_pending(self, trigger):
        rep = real_run(self, trigger)
        if rep is not None:
            cycled.set()
        return rep

    def walk(self, target, **kw):
        report = real_walk(self, target, **kw)
        if target == str(more):
            walked.set()
        return report

    monkeypatch.setattr(ContinuousTrainer, "run_pending", run_pending)
    monkeypatch.setattr(Crawler, "walk", walk)
    store = open_store(data)
    with store.session() as s:
        controls.set_paused(s, True, by="test")          # paused before it even starts
    agent = Agent(AgentConfig(data, TrainerSettings(preset="tiny", workers=1, min_cycle_tokens=50,
                                                     max_steps=3, batch_size=2),
                              watch=(str(watch),), quiet_period=0.1, lease_ttl=1.5))
    t = threading.Thread(target=agent.run)
    t.start()
    try:
        wait_until(agent.paused, "the agent to read the pause")
        # a heartbeat or two later: still nothing trained, with a document waiting
        beat = threading.Event()
        beat.wait(1.2)
        assert not cycled.is_set() and agent.cycles_completed == 0
        with store.session() as s:
            add_target(s, TargetKind.CRAWL, str(more))
            controls.set_paused(s, False, by="test")
        wait_until(walked, "the added target to be crawled")
        wait_until(cycled, "a cycle after the resume")
        # a watch root added to the store is watched: a file dropped there is recorded
        with store.session() as s:
            add_target(s, TargetKind.WATCH, str(inbox))
        agent._controls(store)           # what the in-process server does after a write
        assert agent.monitor is not None and str(inbox) in agent.monitor.roots
        seen = threading.Event()
        real_handle = Ingestor.handle

        def handled(self, ev):
            res = real_handle(self, ev)
            if res is not None and res.uri.endswith("/c.txt"):
                seen.set()
            return res
        monkeypatch.setattr(Ingestor, "handle", handled)
        (inbox / "c.txt").write_text("dropped into a root added from the dashboard. " * 30)
        wait_until(seen, "the file in the added root to be ingested")
        with store.session() as s:
            controls.set_paused(s, True, by="test")
        cycled.clear()
        wait_until(agent.paused, "the second pause")
    finally:
        agent.stop.set()
        t.join(TIMEOUT)
        store.close()
    assert not t.is_alive() and not agent.errors
