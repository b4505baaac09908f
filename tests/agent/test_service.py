"""`cllm service` (issue 27, agent/service.py): the unit's content (--dry-run, and installed
into a temporary XDG_CONFIG_HOME with a fake `systemctl` on PATH that records its calls), the
launchd plist, one-line errors where there is no user systemd, a real `systemctl --user`
round trip where the machine has one; and `cllm agent --log-file` rotating its file."""
from __future__ import annotations

import logging
import os
import plistlib
import pwd
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.cli.logs import log_file
from agent.service import Launchd, ServiceSpec, agent_argv, systemd_unit
from agent.settings import SETTINGS
from engine.cpu import usable_cpus

REPO = Path(__file__).resolve().parents[2]


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def fake_tool(bin_dir: Path, name: str, status: int = 0, say: str = "") -> Path:
    """An executable `name` that appends its arguments (one call a line) to bin_dir/calls
    and exits with `status`, printing `say` on stderr."""
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / name
    exe.write_text(f"#!/bin/sh\necho {name} \"$@\" >> {shlex.quote(str(bin_dir / 'calls'))}\n"
                   + (f"echo {shlex.quote(say)} >&2\n" if say else "") + f"exit {status}\n")
    exe.chmod(0o755)
    return bin_dir / "calls"


def calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def fake_path(tmp_path, monkeypatch):
    """PATH with only a folder of fake tools (they run by #!/bin/sh); returns the folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    for name in [s.env for s in SETTINGS] + ["CLLM_CONFIG", "CLLM_DATABASE_URL"]:
        monkeypatch.delenv(name, raising=False)
    return bin_dir


def unit_lines(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ln in text.splitlines():
        if "=" in ln and not ln.startswith("#"):
            k, v = ln.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_dry_run_prints_the_unit_and_touches_nothing(tmp_path, fake_path, monkeypatch):
    recorded = fake_tool(fake_path, "systemctl")
    monkeypatch.chdir(tmp_path)
    data, notes = tmp_path / "my data", tmp_path / "notes"
    r = invoke("service", "install", "--dry-run", "--", "--data-dir", str(data),
               "--watch", str(notes), "--cpu-share", "0.5", "--priority", "idle")
    assert r.exit_code == 0, r.output
    unit = unit_lines(r.stdout)
    argv = shlex.split(unit["ExecStart"][0])
    assert argv[:4] == [sys.executable, "-m", "agent", "agent"]
    assert argv[4:6] == ["--data-dir", str(data.resolve())]         # quoted: it has a space
    assert argv[6:] == ["--data-dir", str(data), "--watch", str(notes), "--cpu-share", "0.5",
                        "--priority", "idle", "--cpu-share", "1"]
    assert unit["Nice"] == ["10"] and unit["IOSchedulingClass"] == ["idle"]
    assert unit["CPUQuota"] == [f"{round(0.5 * usable_cpus() * 100)}%"]
    assert unit["Restart"] == ["on-failure"] and unit["RestartSec"] == ["10"]
    assert unit["RestartPreventExitStatus"] == ["2 3"]
    assert unit["StandardOutput"] == ["journal"] and unit["StandardError"] == ["journal"]
    assert unit["WorkingDirectory"] == [os.getcwd()]                # relative paths hold
    assert unit["WantedBy"] == ["default.target"]
    assert not calls(recorded)                                        # nothing ran
    assert not (Path(os.environ["XDG_CONFIG_HOME"]) / "systemd").exists()


def test_without_a_cpu_share_there_is_no_quota_and_the_config_files_share_counts(
        tmp_path, fake_path):
    r = invoke("service", "install", "--dry-run", "--", "--data-dir", str(tmp_path / "d"))
    assert r.exit_code == 0 and "CPUQuota" not in r.stdout and "--cpu-share" not in r.stdout
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "cllm.toml").write_text("[agent]\ncpu-share = 0.25\n")
    r = invoke("service", "install", "--dry-run", "--", "--data-dir", str(tmp_path / "d"))
    assert f"CPUQuota={max(1, round(0.25 * usable_cpus() * 100))}%" in r.stdout


def test_a_bad_agent_flag_fails_before_anything_is_written(tmp_path, fake_path):
    recorded = fake_tool(fake_path, "systemctl")
    r = CliRunner().invoke(main, ["service", "install", "--", "--cpu-share", "3"])
    assert r.exit_code == 2 and r.output.startswith("Error: ") and "cpu-share" in r.output
    r = CliRunner().invoke(main, ["service", "install", "--", "--wacth", "x"])
    assert r.exit_code == 2 and "No such option" in r.output
    assert not calls(recorded)


def test_install_writes_the_unit_enables_it_and_uninstall_removes_it(tmp_path, fake_path,
                                                                    monkeypatch):
    recorded = fake_tool(fake_path, "systemctl")
    fake_tool(fake_path, "journalctl")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    args = ["--", "--data-dir", str(tmp_path / "d"), "--watch", str(tmp_path)]
    dry = invoke("service", "install", "--dry-run", *args).stdout
    r = invoke("service", "install", *args)
    assert r.exit_code == 0, r.output
    unit = Path(os.environ["XDG_CONFIG_HOME"]) / "systemd" / "user" / "cllm-agent.service"
    assert unit.read_text() == dry                       # what --dry-run printed
    assert unit.stat().st_mode & 0o777 == 0o600          # it may hold a token
    assert f'Environment="PYTHONPATH={REPO}"' in dry or f"Environment=PYTHONPATH={REPO}" in dry
    assert "loginctl enable-linger" in r.output
    assert calls(recorded) == ["systemctl --user daemon-reload",
                               "systemctl --user enable --now cllm-agent.service"]
    assert invoke("service", "status").exit_code == 0
    assert invoke("service", "logs", "-n", "5").exit_code == 0
    r = invoke("service", "uninstall")
    assert r.exit_code == 0 and not unit.exists()
    assert calls(recorded)[2:] == ["systemctl --user status --no-pager cllm-agent.service",
                                   "journalctl --user -u cllm-agent.service --no-pager -n 5",
                                   "systemctl --user disable --now cllm-agent.service",
                                   "systemctl --user daemon-reload"]
    r = CliRunner().invoke(main, ["service", "uninstall"])
    assert r.exit_code == 1 and "nothing to uninstall" in r.output


def test_status_passes_the_managers_exit_status_through(tmp_path, fake_path):
    fake_tool(fake_path, "systemctl", status=3)              # inactive
    assert CliRunner().invoke(main, ["service", "status", "--name", "other"]).exit_code == 3


def test_no_user_systemd_is_one_line_with_the_way_out_and_leaves_no_unit(tmp_path, fake_path):
    r = CliRunner().invoke(main, ["service", "install"])     # no systemctl at all
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "no systemctl" in r.output and "--dry-run" in r.output and "--log-file" in r.output
    fake_tool(fake_path, "systemctl", status=1,
              say="Failed to connect to bus: No medium found")
    r = CliRunner().invoke(main, ["service", "install"])
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert "Failed to connect to bus" in r.output and "--dry-run" in r.output
    assert not (Path(os.environ["XDG_CONFIG_HOME"]) / "systemd/user/cllm-agent.service").exists()


def test_the_unit_quotes_what_systemd_would_expand():
    spec = ServiceSpec("cllm-x", agent_argv(["--watch", "/home/a b/100%", "--exclude", "$HOME"]),
                       "/srv/w d", {"PYTHONPATH": "/x"}, cpu_quota=150)
    unit = systemd_unit(spec)
    assert '"/home/a b/100%%"' in unit and "$$HOME" in unit and "CPUQuota=150%" in unit
    assert 'WorkingDirectory="/srv/w d"' in unit
    with pytest.raises(Exception, match="not a valid unit name"):
        ServiceSpec("../evil", (), "/")


def test_the_launchd_agent_is_a_background_plist_bootstrapped_into_the_gui_domain(
        tmp_path, fake_path):
    recorded = fake_tool(fake_path, "launchctl")
    spec = ServiceSpec("cllm-agent", agent_argv(["--data-dir", "/d"]), "/w", {"PYTHONPATH": "/x"})
    lines = Launchd().install(spec)
    path = Path(os.environ["HOME"]) / "Library/LaunchAgents/cllm-agent.plist"
    plist = plistlib.loads(path.read_bytes())
    assert plist["ProgramArguments"] == list(spec.argv) and plist["Label"] == "cllm-agent"
    assert plist["ProcessType"] == "Background" and plist["Nice"] == 10
    assert plist["LowPriorityIO"] and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["StandardErrorPath"].endswith("Library/Logs/cllm-agent.log")
    assert plist["EnvironmentVariables"] == {"PYTHONPATH": "/x"}
    assert calls(recorded) == [f"launchctl bootstrap gui/{os.getuid()} {path}"]
    assert any("installed" in ln for ln in lines)
    Launchd().uninstall("cllm-agent")
    assert not path.exists()
    assert calls(recorded)[1] == f"launchctl bootout gui/{os.getuid()}/cllm-agent"


def user_systemd() -> str | None:
    """Why a real `systemctl --user` round trip cannot run here, or None when it can."""
    if shutil.which("systemctl") is None:
        return "no systemctl on this machine"
    r = subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True,
                       text=True)
    if r.returncode != 0:
        return f"no user systemd here: {(r.stderr or r.stdout).strip()[:120]}"
    return None


@pytest.mark.skipif(user_systemd() is not None, reason=str(user_systemd()))
def test_a_real_user_systemd_installs_enables_and_removes_the_unit(tmp_path, monkeypatch):
    """The user's real manager reads units from the real ~/.config/systemd/user: a unit of
    its own name there, removed again whatever happens."""
    real_home = pwd.getpwuid(os.getuid()).pw_dir
    monkeypatch.setenv("HOME", real_home)
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    name = f"cllm-test-{uuid.uuid4().hex[:8]}"
    unit = Path(real_home) / ".config/systemd/user" / f"{name}.service"
    try:
        r = invoke("service", "install", "--name", name, "--", "--data-dir",
                   str(tmp_path / "d"), "--role", "train")
        assert r.exit_code == 0, r.output
        enabled = subprocess.run(["systemctl", "--user", "is-enabled", f"{name}.service"],
                                 capture_output=True, text=True)
        assert enabled.stdout.strip() == "enabled"
        shown = subprocess.run(["systemctl", "--user", "show", "-p", "Nice,IOSchedulingClass",
                                f"{name}.service"], capture_output=True, text=True).stdout
        assert "Nice=10" in shown
        assert invoke("service", "uninstall", "--name", name).exit_code == 0
        gone = subprocess.run(["systemctl", "--user", "cat", f"{name}.service"],
                              capture_output=True, text=True)
        assert gone.returncode != 0 and not unit.exists()
    finally:
        if unit.exists():
            subprocess.run(["systemctl", "--user", "disable", "--now", f"{name}.service"])
            unit.unlink()
            subprocess.run(["systemctl", "--user", "daemon-reload"])


# --------------------------------------------------------------------------- --log-file

def test_the_log_file_rotates_by_size_and_keeps_count_files(tmp_path):
    path = tmp_path / "logs" / "agent.log"                   # its folder is created
    log = logging.getLogger("agent.test_service")
    log.setLevel(logging.INFO)
    with log_file(str(path), 2048, 3):
        for i in range(400):
            log.info("line %04d of the agent's log, long enough to fill files", i)
    log.info("after the block: not in the file")
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["agent.log", "agent.log.1", "agent.log.2", "agent.log.3"]
    assert all(p.stat().st_size <= 2048 for p in path.parent.iterdir())
    assert "line 0399" in path.read_text() and "after the block" not in path.read_text()
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in path.parent.iterdir())


def test_cllm_agent_log_file_receives_the_agents_log(tmp_path, monkeypatch):
    """Through the command: the agent's own lines go to --log-file, rotated at
    --log-file-bytes into --log-file-count files."""
    from agent import daemon

    class FakeAgent:
        cycles_completed = 0

        def __init__(self, cfg, stop=None, serve=None):
            self.cfg = cfg

        def run(self):
            for i in range(200):
                logging.getLogger("agent.daemon").info("cycle %d completed: a fake line", i)

    monkeypatch.setattr(daemon, "Agent", FakeAgent)
    path = tmp_path / "agent.log"
    r = CliRunner().invoke(main, ["agent", "--data-dir", str(tmp_path / "d"), "--watch",
                                  str(tmp_path), "--log-file", str(path), "--log-file-bytes",
                                  "4096", "--log-file-count", "2"])
    assert r.exit_code == 0, r.output
    assert "cycle 199 completed" in path.read_text()
    assert sorted(p.name for p in tmp_path.glob("agent.log*")) == [
        "agent.log", "agent.log.1", "agent.log.2"]
    bad = CliRunner().invoke(main, ["agent", "--data-dir", str(tmp_path / "d"), "--watch",
                                    str(tmp_path), "--log-file", str(tmp_path)])   # a folder
    assert bad.exit_code == 1 and "cannot write the log file" in bad.output
