"""A running agent's threads at --priority (issue 27): the trainer thread (Node Zero,
tokenizer learning, evaluation) and its worker spheres run at the training priority, read back
from /proc/<pid>/task/<tid>/stat and ioprio_get while a cycle trains; the HTTP server, the
ingest loop, the file watcher and the main thread keep the process's priority."""
from __future__ import annotations

import os
import sys
import threading

import pytest

from agent import continuous_trainer
from agent.daemon import Agent, AgentConfig
from agent.settings import TrainerSettings
from engine.priority import IOPRIO_CLASS_BE, IOPRIO_CLASS_IDLE, io_priority
from tests.engine.test_priority import SCHED_IDLE, SCHED_OTHER, thread_stat

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="per-thread nice, SCHED_IDLE and ioprio are Linux's")
TIMEOUT = 120


@pytest.mark.parametrize("priority", ["low", "idle"])
def test_training_threads_run_low_and_the_server_and_watcher_keep_the_process_priority(
        tmp_path, monkeypatch, priority):
    pytest.importorskip("uvicorn")
    from agent.server.config import ServeConfig

    watch = tmp_path / "watched"
    watch.mkdir()
    (watch / "a.txt").write_text("threads at a low priority still learn the same text. " * 40)
    seen: dict[str, tuple] = {}
    captured = threading.Event()
    real_learn = continuous_trainer.learn

    def learn(*args, progress=None, **kw):
        def step(*a):
            if not captured.is_set():             # on the trainer thread, spheres alive
                for t in threading.enumerate():
                    if t.native_id is not None:
                        try:
                            seen[t.name] = (*thread_stat(t.native_id), io_priority(t.native_id))
                        except FileNotFoundError:   # a thread that just ended
                            pass
                captured.set()
            if progress is not None:
                progress(*a)
        return real_learn(*args, progress=step, **kw)

    monkeypatch.setattr(continuous_trainer, "learn", learn)
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    main_before = thread_stat(threading.main_thread().native_id)
    agent = Agent(AgentConfig(tmp_path / "data", TrainerSettings(
        preset="tiny", workers=2, batch_size=2, min_cycle_tokens=50, max_steps=3,
        priority=priority), watch=(str(watch),), quiet_period=0.1, pause_on_battery=False),
        serve=ServeConfig(port=0))
    t = threading.Thread(target=agent.run, name="test-agent")
    t.start()
    try:
        assert captured.wait(TIMEOUT), f"no training step: {agent.errors}"
    finally:
        agent.stop.set()
        t.join(TIMEOUT)
    assert not t.is_alive() and not agent.errors
    low = (19, SCHED_IDLE) if priority == "idle" else (min(19, base + 10), SCHED_OTHER)
    training = [n for n in seen if n == "agent-trainer" or n.startswith("cllm-sphere-")]
    assert sorted(training) == ["agent-trainer", "cllm-sphere-0", "cllm-sphere-1"]
    for name in training:
        assert seen[name][:2] == low, (name, seen[name])
        io_class = seen[name][2][0]
        assert io_class == (IOPRIO_CLASS_IDLE if priority == "idle" else IOPRIO_CLASS_BE)
    serving = [n for n in seen if n in ("cllm-serve", "agent-ingest", "test-agent")
               or n.startswith("file-monitor-")]
    assert {"cllm-serve", "agent-ingest", "file-monitor-debounce"} <= set(serving)
    for name in serving:
        assert seen[name][:2] == (base, SCHED_OTHER), (name, seen[name])
        assert seen[name][2] != seen["agent-trainer"][2], name
    assert thread_stat(threading.main_thread().native_id) == main_before
