"""`cllm serve` as a user runs it: a subprocess on a free port, answering once its checkpoint
is loaded, stopped by Ctrl-C (SIGINT) with exit status 0; refusals are one line."""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner

from agent import daemon
from agent.cli import main
from agent.server import require_serve_extra
from engine.errors import CllmError


@pytest.mark.slow
def test_cllm_serve_subprocess_serves_and_stops_on_ctrl_c(trained):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("CLLM_DATABASE_URL", None)
    p = subprocess.Popen([sys.executable, "-m", "agent", "-v", "serve", "--data-dir",
                          str(trained), "--port", "0"], stderr=subprocess.PIPE, text=True,
                         env=env)
    try:
        url, lines = None, []
        for line in p.stderr:               # blocks on the pipe until the server says so
            lines.append(line)
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            url = url or (m.group(1) if m else None)
            if "serving checkpoint" in line:
                break
        assert url, lines
        h = httpx.get(url + "/health")
        assert h.status_code == 200 and h.json()["cycle"] == 2
        r = httpx.post(url + "/v1/completions", json={"prompt": "every", "max_tokens": 4})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
        p.send_signal(signal.SIGINT)
        rest = p.stderr.read()
        assert p.wait(60) == 0, rest
        assert "server stopped" in rest and "Traceback" not in rest
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_cllm_serve_refusals_are_one_line(tmp_path, trained):
    r = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "no store in" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["serve", "--data-dir", str(trained), "--host", "0.0.0.0",
                                  "--port", "0"])
    assert r.exit_code == 2 and "needs a token" in r.output


def test_missing_serve_extra_is_one_line_with_a_pip_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(CllmError) as e:
        require_serve_extra()
    assert "uvicorn" in e.value.one_line() and "pip install" in e.value.one_line()


def test_cllm_agent_serve_flags_reach_the_agent(tmp_path, monkeypatch):
    got = []

    class Stop(Exception):
        pass

    class Recorder:
        def __init__(self, cfg, stop=None, serve=None):
            got.append(serve)
            raise Stop

    monkeypatch.setattr(daemon, "Agent", Recorder)
    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)
    base = ["agent", "--data-dir", str(tmp_path / "data"), "--watch", str(tmp_path)]
    r = CliRunner().invoke(main, [*base, "--serve", "--port", "0", "--concurrency", "3",
                                  "--cors", "https://app.example", "--request-timeout", "60",
                                  "--max-connections", "50"])
    assert isinstance(r.exception, Stop), r.output
    cfg = got.pop()
    assert (cfg.port, cfg.limits.concurrency, cfg.cors) == (0, 3, ("https://app.example",))
    assert (cfg.limits.request_timeout, cfg.limits.max_connections) == (60, 50)
    r = CliRunner().invoke(main, base)
    assert isinstance(r.exception, Stop) and got.pop() is None
    r = CliRunner().invoke(main, [*base, "--serve", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "needs a token" in r.output and not got
