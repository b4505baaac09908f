"""The agent as a user service: a systemd --user unit on Linux, a launchd agent on macOS.

`ServiceSpec` says what runs: this interpreter with `-m agent agent` and the agent's flags,
in the folder the install ran from (so relative paths mean what they meant there), with
PYTHONPATH when the install had one. From it come
- `systemd_unit`: ~/.config/systemd/user/NAME.service ($XDG_CONFIG_HOME): Nice=10,
  IOSchedulingClass=idle, CPUQuota= from --cpu-share x the usable CPUs (the quota enforces
  the share, and the agent, given --cpu-share 1, sizes its workers to what the quota leaves),
  Restart=on-failure (not on a usage error, status 2, nor while another agent holds the data
  directory, status 3), its output to the journal;
- `launchd_plist`: ~/Library/LaunchAgents/NAME.plist: ProcessType Background, Nice 10,
  LowPriorityIO, restarted when it fails, output to ~/Library/Logs/NAME.log (launchd has no
  CPU quota: the agent's own --cpu-share applies).
`Systemd` and `Launchd` install (write, reload, enable and start), uninstall (stop, disable,
remove), and show status and logs through systemctl/journalctl and launchctl. A failure is a
ServiceError with a hint (no user systemd here: --dry-run prints the unit; or run
`cllm agent --log-file PATH`), and a unit whose reload failed is removed again.

The files are written private (0600): they may hold a --token or a --database-url. This
module does not parse the agent's flags (agent/cli/service.py does, with the agent's own
command) and starts no agent itself.
"""
from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from engine.errors import CllmError

DEFAULT_NAME = "cllm-agent"
NICE = 10
RESTART_SEC = 10
STOP_TIMEOUT_S = 120        # a stop ends the cycle at a step boundary and commits it
NO_RESTART_STATUS = (2, 3)  # a usage error, another agent holds the data directory
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
OTHERWISE = ("`cllm service install --dry-run` prints the unit to install by hand, or run "
             "`cllm agent --log-file PATH` from your session's start-up")


class ServiceError(CllmError):
    """The service manager is missing or refused a step."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str                       # the unit's (the launchd label's) name
    argv: tuple[str, ...]           # the agent's command line
    workdir: str                    # where it runs
    env: dict = field(default_factory=dict)
    cpu_quota: Optional[int] = None  # percent of one CPU (CPUQuota=); None: no quota

    def __post_init__(self):
        if not NAME_RE.match(self.name):
            raise ServiceError(f"service name {self.name!r} is not a valid unit name",
                               "use letters, digits, '-', '_' or '.', e.g. --name cllm-notes")


def agent_argv(agent_args: Sequence[str]) -> tuple[str, ...]:
    """This interpreter running the agent with `agent_args`."""
    return (sys.executable, "-m", "agent", "agent", *agent_args)


def service_env() -> dict:
    """What the service needs of this environment: PYTHONPATH, when the install had one (a
    checkout run in place). CLLM_* settings are not copied: the config file or the flags."""
    return {k: os.environ[k] for k in ("PYTHONPATH",) if os.environ.get(k)}


# ----------------------------------------------------------------------------- systemd

def _quote(arg: str) -> str:
    """One word of a systemd command line or assignment: % and $ escaped (specifiers and
    variables), quoted when it holds a space, a quote or a backslash."""
    s = arg.replace("%", "%%").replace("$", "$$")
    if s and re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", s):
        return s
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'


def unit_dir() -> Path:
    """The user's systemd unit folder: $XDG_CONFIG_HOME/systemd/user (~/.config/...)."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "systemd" / "user"


def systemd_unit(spec: ServiceSpec) -> str:
    lines = ["[Unit]",
             "Description=Crystalline CLLM agent: learns what it watches, in the background",
             "",
             "[Service]",
             "Type=simple",
             f"WorkingDirectory={_quote(spec.workdir)}",
             f"ExecStart={' '.join(_quote(a) for a in spec.argv)}"]
    lines += [f"Environment={_quote(f'{k}={v}')}" for k, v in sorted(spec.env.items())]
    lines += [f"Nice={NICE}", "IOSchedulingClass=idle"]
    if spec.cpu_quota is not None:
        lines += ["# --cpu-share as a quota; the agent sizes its workers to it (--cpu-share 1)",
                  f"CPUQuota={spec.cpu_quota}%"]
    lines += ["Restart=on-failure",
              f"RestartSec={RESTART_SEC}",
              f"RestartPreventExitStatus={' '.join(map(str, NO_RESTART_STATUS))}",
              f"TimeoutStopSec={STOP_TIMEOUT_S}",
              "StandardOutput=journal",
              "StandardError=journal",
              "",
              "[Install]",
              "WantedBy=default.target",
              ""]
    return "\n".join(lines)


class Systemd:
    """systemctl --user and journalctl --user for the unit NAME.service."""

    def unit_path(self, name: str) -> Path:
        return unit_dir() / f"{name}.service"

    def text(self, spec: ServiceSpec) -> str:
        return systemd_unit(spec)

    def install(self, spec: ServiceSpec) -> list[str]:
        """Write the unit, reload, enable and start it. Returns what to tell the user."""
        exe = _tool("systemctl", "this system does not run systemd")
        path = self.unit_path(spec.name)
        _write_private(path, self.text(spec).encode())
        try:
            _run(exe, "--user", "daemon-reload")
        except ServiceError:
            path.unlink(missing_ok=True)         # nothing half-installed
            raise
        _run(exe, "--user", "enable", "--now", f"{spec.name}.service")
        return [f"installed {path}, enabled and started",
                f"logs: cllm service logs --name {spec.name} (journalctl --user -u "
                f"{spec.name})",
                "to keep it running after you log out: loginctl enable-linger $USER"]

    def uninstall(self, name: str) -> list[str]:
        exe = _tool("systemctl", "this system does not run systemd")
        path = self.unit_path(name)
        if not path.exists():
            raise ServiceError(f"no unit {path}", "nothing to uninstall (check --name)")
        _run(exe, "--user", "disable", "--now", f"{name}.service")
        path.unlink()
        _run(exe, "--user", "daemon-reload")
        return [f"stopped, disabled and removed {path}"]

    def status(self, name: str) -> int:
        exe = _tool("systemctl", "this system does not run systemd")
        return subprocess.run([exe, "--user", "status", "--no-pager", f"{name}.service"]
                              ).returncode

    def logs(self, name: str, lines: int, follow: bool) -> int:
        exe = _tool("journalctl", "this system has no systemd journal")
        return subprocess.run([exe, "--user", "-u", f"{name}.service", "--no-pager",
                               "-n", str(lines)] + (["-f"] if follow else [])).returncode


# ----------------------------------------------------------------------------- launchd

def launchd_plist(spec: ServiceSpec, log_file: Path) -> bytes:
    return plistlib.dumps({
        "Label": spec.name,
        "ProgramArguments": list(spec.argv),
        "WorkingDirectory": spec.workdir,
        "EnvironmentVariables": dict(spec.env),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},      # restarted when it fails
        "ThrottleInterval": RESTART_SEC,
        "ProcessType": "Background",                 # CPU and I/O throttled by the system
        "Nice": NICE,
        "LowPriorityIO": True,
        "ExitTimeOut": STOP_TIMEOUT_S,
        "StandardOutPath": str(log_file),
        "StandardErrorPath": str(log_file),
    })


class Launchd:
    """launchctl for the user agent NAME (~/Library/LaunchAgents/NAME.plist)."""

    def unit_path(self, name: str) -> Path:
        return Path.home() / "Library" / "LaunchAgents" / f"{name}.plist"

    def log_file(self, name: str) -> Path:
        return Path.home() / "Library" / "Logs" / f"{name}.log"

    def text(self, spec: ServiceSpec) -> str:
        return launchd_plist(spec, self.log_file(spec.name)).decode()

    def _domain(self) -> str:
        return f"gui/{os.getuid()}"

    def install(self, spec: ServiceSpec) -> list[str]:
        exe = _tool("launchctl", "this system has no launchd")
        path = self.unit_path(spec.name)
        self.log_file(spec.name).parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, launchd_plist(spec, self.log_file(spec.name)))
        try:
            _run(exe, "bootstrap", self._domain(), str(path))
        except ServiceError:
            path.unlink(missing_ok=True)
            raise
        return [f"installed {path} and started it (it starts again at every login)",
                f"logs: {self.log_file(spec.name)} (cllm service logs --name {spec.name})"]

    def uninstall(self, name: str) -> list[str]:
        exe = _tool("launchctl", "this system has no launchd")
        path = self.unit_path(name)
        if not path.exists():
            raise ServiceError(f"no launch agent {path}", "nothing to uninstall (check --name)")
        _run(exe, "bootout", f"{self._domain()}/{name}")
        path.unlink()
        return [f"stopped and removed {path}"]

    def status(self, name: str) -> int:
        exe = _tool("launchctl", "this system has no launchd")
        return subprocess.run([exe, "print", f"{self._domain()}/{name}"]).returncode

    def logs(self, name: str, lines: int, follow: bool) -> int:
        log_file = self.log_file(name)
        if not log_file.exists():
            raise ServiceError(f"no log file {log_file} yet", "is the service installed?")
        return subprocess.run(["tail", "-n", str(lines)] + (["-f"] if follow else [])
                              + [str(log_file)]).returncode


def manager(platform: str = sys.platform):
    """The service manager of this system: launchd on macOS, systemd elsewhere."""
    return Launchd() if platform == "darwin" else Systemd()


# ----------------------------------------------------------------------------- helpers

def _tool(name: str, why: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise ServiceError(f"no {name} on PATH: {why}", OTHERWISE)
    return exe


def _run(exe: str, *args: str) -> None:
    r = subprocess.run([exe, *args], capture_output=True, text=True)
    if r.returncode != 0:
        said = (r.stderr or r.stdout).strip().splitlines()
        raise ServiceError(f"{Path(exe).name} {' '.join(args)} failed (status {r.returncode})"
                           + (f": {said[0]}" if said else ""), OTHERWISE)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, readable by the user alone (it may hold a token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
