"""`cllm serve` as a user runs it: a subprocess on a free port, answering once its checkpoint
is loaded to clients sending the token it printed, its access log never showing the token,
stopped by Ctrl-C (SIGINT) with exit status 0; refusals are one line; where the token comes
from (`cllm token`, --token-file, $CLLM_TOKEN, --token with a warning)."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import stat
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner

from agent import daemon
from agent.cli import main
from agent.server import require_serve_extra
from agent.server.security import token_path
from engine.errors import CllmError


@pytest.mark.slow
def test_cllm_serve_subprocess_serves_and_stops_on_ctrl_c(trained, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("CLLM_DATABASE_URL", None)
    out = open(tmp_path / "stdout", "w+")          # uvicorn's access log goes to stdout
    p = subprocess.Popen([sys.executable, "-m", "agent", "-v", "serve", "--data-dir",
                          str(trained), "--port", "0"], stderr=subprocess.PIPE, text=True,
                         stdout=out, env=env)
    try:
        url, link, lines = None, None, []
        for line in p.stderr:               # blocks on the pipe until the server says so
            lines.append(line)
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            url = url or (m.group(1) if m else None)
            m = re.search(r"dashboard: (\S+)", line)
            link = link or (m.group(1) if m else None)
            if "serving checkpoint" in line:
                break
        assert url and link, lines
        token = token_path(trained).read_text().strip()      # what `cllm token` prints
        assert link == f"{url}/?token={token}"
        assert httpx.get(url + "/v1/models").status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        h = httpx.get(url + "/health")
        assert h.status_code == 200 and h.json()["cycle"] == 2
        r = httpx.post(url + "/v1/completions", json={"prompt": "every", "max_tokens": 4},
                       headers=auth)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
        assert httpx.get(link).status_code == 303                # the dashboard link
        p.send_signal(signal.SIGINT)
        rest = p.stderr.read()
        assert p.wait(60) == 0, rest
        assert "server stopped" in rest and "Traceback" not in rest
        out.seek(0)
        access = out.read()
        assert "GET /?token=REDACTED" in access and token not in access
        assert ("".join(lines) + rest).count(token) == 1         # the dashboard line, once
    finally:
        out.close()
        if p.poll() is None:
            p.kill()
            p.wait()


def test_cllm_serve_refusals_are_one_line(tmp_path, trained):
    r = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "no store in" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["serve", "--data-dir", str(trained), "--host", "0.0.0.0",
                                  "--port", "0"])
    assert r.exit_code == 2 and "without TLS" in r.output and "--allow-http" in r.output
    r = CliRunner().invoke(main, ["serve", "--data-dir", str(trained), "--host", "0.0.0.0",
                                  "--auth", "none", "--allow-http"])
    assert r.exit_code == 2 and "needs a token" in r.output


def test_missing_serve_extra_is_one_line_with_a_pip_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(CllmError) as e:
        require_serve_extra()
    assert "uvicorn" in e.value.one_line() and "pip install" in e.value.one_line()


class Stop(Exception):
    """Raised by the recording Agent instead of running one."""


def recorded_agents(monkeypatch) -> tuple[list, type]:
    """`cllm agent` builds a recorder instead of an Agent: the list gets each serve config
    it was given, and Stop ends the command."""
    got: list = []

    class Recorder:
        def __init__(self, cfg, stop=None, serve=None):
            got.append(serve)
            raise Stop

    monkeypatch.setattr(daemon, "Agent", Recorder)
    return got, Stop


def test_cllm_agent_serve_flags_reach_the_agent(tmp_path, monkeypatch):
    got, Stop = recorded_agents(monkeypatch)
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
    assert r.exit_code == 2 and "without TLS" in r.output and not got


def test_the_token_comes_from_a_file_or_the_environment_and_warns_on_the_command_line(
        tmp_path, monkeypatch):
    got, Stop = recorded_agents(monkeypatch)
    for name in ("CLLM_DATABASE_URL", "CLLM_TOKEN", "CLLM_SERVE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    base = ["agent", "--data-dir", str(tmp_path / "data"), "--watch", str(tmp_path), "--serve"]
    r = CliRunner().invoke(main, [*base, "--token", "from-argv"])
    assert isinstance(r.exception, Stop) and got.pop().token == "from-argv"
    assert "shows in `ps`" in r.output
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    secret.chmod(0o600)
    r = CliRunner().invoke(main, [*base, "--token-file", str(secret)])
    assert isinstance(r.exception, Stop) and got.pop().token == "from-a-file"
    assert "warning" not in r.output
    r = CliRunner().invoke(main, base, env={"CLLM_TOKEN": "from-env"})
    assert isinstance(r.exception, Stop) and got.pop().token == "from-env"
    assert "warning" not in r.output
    r = CliRunner().invoke(main, base)                   # the data directory's own, later
    assert isinstance(r.exception, Stop) and got.pop().token is None
    r = CliRunner().invoke(main, [*base, "--token", "a b"])
    assert r.exit_code == 2 and "cookie cannot carry" in r.output and not got
    r = CliRunner().invoke(main, [*base, "--token-file", str(secret)], env={"CLLM_TOKEN": "x"})
    assert r.exit_code == 2 and "both give a token" in r.output and not got


def test_cllm_token_prints_the_data_directorys_token_and_status_says_where(tmp_path, trained):
    data = tmp_path / "data"
    shutil.copytree(trained, data)
    token_path(data).unlink(missing_ok=True)
    r = CliRunner().invoke(main, ["status", "--data-dir", str(data)])
    assert r.exit_code == 0 and "server token: none yet" in r.output
    r = CliRunner().invoke(main, ["token", "--data-dir", str(data)])
    assert r.exit_code == 0
    token = r.output.strip()
    assert token == token_path(data).read_text().strip() and len(token) >= 40
    assert stat.S_IMODE(token_path(data).stat().st_mode) == 0o600
    assert CliRunner().invoke(main, ["token", "--data-dir", str(data)]).output.strip() == token
    r = CliRunner().invoke(main, ["token", "--data-dir", str(data), "--path"])
    assert r.output.strip() == str(token_path(data))
    r = CliRunner().invoke(main, ["status", "--data-dir", str(data)])
    assert f"server token: {token_path(data)} (`cllm token` prints it)" in r.output
    assert token not in r.output
    r = CliRunner().invoke(main, ["token", "--data-dir", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no data directory" in r.output
