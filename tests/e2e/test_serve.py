"""`cllm agent --serve` in process: the server runs on its own thread beside the agent's,
answers clients sending the data directory's token (made at its start), loads each
checkpoint on the trainer's in-process event after the commit (no file watching), and stops
with the agent, every thread joined."""
from __future__ import annotations

import threading

import httpx
import pytest

from agent.continuous_trainer import TrainerSettings
from agent.daemon import Agent, AgentConfig
from agent.server.config import ServeConfig
from agent.server.security import token_path

pytestmark = pytest.mark.slow
TIMEOUT = 120


def test_agent_serve_reloads_on_the_commit_event_and_stops_with_the_agent(tmp_path):
    corpus = tmp_path / "corpus" / "notes"
    corpus.mkdir(parents=True)
    (corpus / "a.txt").write_text("every sphere touches twelve neighbours. " * 30)
    before = threading.active_count()
    agent = Agent(AgentConfig(tmp_path / "data", TrainerSettings(
        preset="tiny", workers=1, min_cycle_tokens=50, max_steps=3, batch_size=2,
        max_new_tokens=5), crawl=(str(corpus),)), serve=ServeConfig(port=0))
    errors: list = []

    def run():
        try:
            agent.run()
        except BaseException as e:
            errors.append(e)
    t = threading.Thread(target=run)
    t.start()
    try:
        assert agent.serving.wait(TIMEOUT), errors
        server = agent.server
        assert server.watcher._observer is None          # reloads come from the trainer
        loaded = threading.Event()
        cycles = []
        server.service.holder.listeners.append(lambda c: (cycles.append(c.cycle), loaded.set()))
        if server.service.holder.current is None:
            assert loaded.wait(TIMEOUT), errors
        h = httpx.get(server.url + "/health").json()
        assert h["status"] == "ok" and h["cycle"] >= 1
        auth = {"Authorization": f"Bearer {token_path(tmp_path / 'data').read_text().strip()}"}
        assert httpx.get(server.url + "/api/status").status_code == 401
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "every", "max_tokens": 3},
                       headers=auth)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
        st = httpx.get(server.url + "/api/status", headers=auth).json()
        assert st["agent_running"] and st["cycles_completed"] >= 1
    finally:
        agent.stop.set()
        t.join(TIMEOUT)
    assert not t.is_alive() and not errors and not agent.errors
    assert threading.active_count() == before
