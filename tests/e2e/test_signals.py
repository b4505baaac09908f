"""Stopping by signal, in real subprocesses: SIGHUP (a closed terminal) stops the agent as
SIGTERM does; Ctrl-C stops `cllm train` at the next step and saves what it trained."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading

import pytest

from tests.e2e.test_agent import TIMEOUT, AgentProc, cli, drop

pytestmark = pytest.mark.slow


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "data", tmp_path / "watched"


def test_sighup_stops_the_agent_as_sigterm_does(dirs):
    """Regression: a closed terminal killed the agent (exit 129) in the middle of a cycle."""
    data, watch = dirs
    drop(watch, "a.txt", "a document long enough for a long cycle of training. ", reps=200)
    a = AgentProc(data, watch, "--cycle-seconds", "600", "--max-steps", "100000")
    try:
        a.wait_for(r"cycle 1: step \d+")
        assert a.stop(signal.SIGHUP) == 0, "".join(a.log)
    finally:
        if a.p.poll() is None:
            a.p.kill()
    assert any("received SIGHUP" in line for line in a.log), "".join(a.log)
    cycles = json.loads(cli("history", "cycles", "--data-dir", str(data), "--json").stdout)
    assert [(c["id"], c["status"], c["ended_by"]) for c in cycles] == [(1, "completed", "stop")]
    assert cycles[0]["steps"] >= 1 and cycles[0]["checkpoint_path"]


class TrainProc:
    """`cllm train` in a subprocess, its stderr lines read into a queue."""

    def __init__(self, *args):
        self.p = subprocess.Popen([sys.executable, "-m", "agent", "-v", "train", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines: queue.Queue = queue.Queue()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.p.stderr:
            self.log.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern):
        rx = re.compile(pattern)
        while True:
            line = self.lines.get(timeout=TIMEOUT)
            if line is None:
                raise AssertionError(f"train exited before {pattern!r}:\n{''.join(self.log)}")
            if rx.search(line):
                return line


def test_ctrl_c_during_cllm_train_saves_what_it_trained_and_says_so(tmp_path):
    """Regression: Ctrl-C after 1,367 of 20,000 steps printed "Aborted!" and saved nothing."""
    data, text = tmp_path / "data", tmp_path / "text"
    drop(text, "a.txt", "words to train on for a very long time. ", reps=200)
    t = TrainProc(str(text), "--data-dir", str(data), "--preset", "tiny", "--workers", "1",
                  "--batch-size", "2", "--steps", "1000000")
    try:
        t.wait_for(r"cycle 1: step 1\b")
        t.p.send_signal(signal.SIGINT)
        out, _ = t.p.communicate(timeout=TIMEOUT)
    finally:
        if t.p.poll() is None:
            t.p.kill()
    t._reader.join(timeout=10)
    assert t.p.returncode == 130, (out, "".join(t.log))
    m = re.search(r"interrupted after (\d+) of 1000000 steps: what was trained is saved "
                  r"\(cycle 1, committed, not evaluated\)", out)
    assert m and int(m.group(1)) >= 1, out
    assert "Aborted" not in out + "".join(t.log)
    cycles = json.loads(cli("history", "cycles", "--data-dir", str(data), "--json").stdout)
    assert [(c["id"], c["status"], c["ended_by"], c["steps"]) for c in cycles] == [
        (1, "completed", "stop", int(m.group(1)))]
    ckpts = json.loads(cli("history", "checkpoints", "--data-dir", str(data), "--verify",
                           "--json").stdout)
    assert [(c["cycle_id"], c["ok"]) for c in ckpts] == [(1, True)]
    docs = json.loads(cli("history", "documents", "--data-dir", str(data), "--json").stdout)
    assert docs[0]["trained_bytes"] > 0          # the ledger counts what it trained
