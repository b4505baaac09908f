"""`cllm service install|uninstall|status|logs`: the agent as a user service (systemd --user
on Linux, launchd on macOS; agent/service.py writes and runs them).

The agent's flags come after `--` and are checked here with `cllm agent`'s own parser and
settings (a typo fails now, not in the journal); the config files the agent reads at start
(agent/settings.py) apply as when it runs in a terminal.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from agent.cli.common import CONTEXT_SETTINGS, Invocation, one_line_errors, pass_invocation
from agent.service import (DEFAULT_NAME, ServiceSpec, Systemd, agent_argv, manager,
                           service_env)
from agent.resolve import resolve
from agent.settings import SETTINGS

name_option = click.option("--name", default=DEFAULT_NAME, show_default=True,
                           help="The service's name (one per data directory).")


@click.group("service", context_settings=CONTEXT_SETTINGS)
def service() -> None:
    """Run the agent as a user service: a systemd --user unit on Linux, a launchd agent on
    macOS; started at login (and kept after logout with `loginctl enable-linger`),
    restarted when it fails, at low priority, logging to the journal.

    Example: cllm service install -- --watch ~/notes --cpu-share 0.5
    """


@service.command("install", context_settings=CONTEXT_SETTINGS)
@name_option
@click.option("--dry-run", is_flag=True, help="Print the unit (or plist); touch nothing.")
@click.argument("agent_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- AGENT FLAGS]")
@pass_invocation
@one_line_errors
def install(inv: Invocation, name: str, dry_run: bool, agent_args: tuple[str, ...]) -> None:
    """Write the service running `cllm agent AGENT FLAGS`, enable and start it.

    The unit runs this Python (`python -m agent agent`) in the current folder, with the data
    directory made explicit, Nice=10, IOSchedulingClass=idle, CPUQuota from --cpu-share x
    the usable CPUs, Restart=on-failure, output to the journal. Settings in the config files
    (~/.config/cllm/cllm.toml, DATA_DIR/cllm.toml) apply when it starts; CLLM_* variables of
    this shell do not reach it.

    Example: cllm service install --dry-run -- --watch ~/src --priority idle
    """
    spec = build_spec(inv, name, agent_args)
    mgr = manager()
    if dry_run:
        click.echo(f"# {mgr.unit_path(name)} would be:", err=True)
        click.echo(mgr.text(spec), nl=False)
        return
    ignored = sorted(s.env for s in SETTINGS if s.env in os.environ)
    if ignored:
        click.echo(f"note: {', '.join(ignored)} of this shell do not reach the service (put "
                   "them in the config file, or after --)", err=True)
    for line in mgr.install(spec):
        click.echo(line)


def build_spec(inv: Invocation, name: str, agent_args: tuple[str, ...]) -> ServiceSpec:
    """The service of `cllm agent AGENT_ARGS`, its flags parsed by the agent's command and
    its settings resolved (the flags, the config files) for the CPU quota."""
    from agent.cli.run import agent as agent_command
    from agent.cli.serve import SERVE_OPTIONS, serve_config
    from agent.server.security import check_binding
    from engine.cpu import usable_cpus

    ctx = agent_command.make_context("agent", list(agent_args))
    params = dict(ctx.params)
    data_dir = Path(params.pop("data_dir")).expanduser().resolve()
    flags = {k: v for k, v in params.items() if k not in SERVE_OPTIONS and k != "serve"}
    values = resolve(flags, data_dir)
    if params["serve"]:                    # what `cllm agent --serve` refuses, refused now
        served = serve_config(**{k: params[k] for k in SERVE_OPTIONS})
        check_binding(served.host, served.token)
    args = ["--data-dir", str(data_dir), *agent_args]
    url = ctx.obj.database_url if isinstance(ctx.obj, Invocation) else None
    if inv.database_url and not url:
        args += ["--database-url", inv.database_url]
    quota = None
    if values["cpu_share"] is not None and isinstance(manager(), Systemd):
        quota = max(1, round(values["cpu_share"] * usable_cpus() * 100))
        args += ["--cpu-share", "1"]       # the quota enforces the share
    return ServiceSpec(name, agent_argv(args), os.getcwd(), service_env(), quota)


@service.command("uninstall", context_settings=CONTEXT_SETTINGS)
@name_option
@one_line_errors
def uninstall(name: str) -> None:
    """Stop and disable the service and remove its unit (the data directory stays).

    Example: cllm service uninstall
    """
    for line in manager().uninstall(name):
        click.echo(line)


@service.command("status", context_settings=CONTEXT_SETTINGS)
@name_option
@click.pass_context
@one_line_errors
def status(ctx: click.Context, name: str) -> None:
    """The service manager's status of the service (`systemctl --user status`); its exit
    status is the manager's (3: not running). `cllm status` says what the agent does.

    Example: cllm service status
    """
    ctx.exit(manager().status(name))


@service.command("logs", context_settings=CONTEXT_SETTINGS)
@name_option
@click.option("-n", "--lines", default=50, show_default=True, type=click.IntRange(min=0),
              help="The last this many lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.pass_context
@one_line_errors
def logs(ctx: click.Context, name: str, lines: int, follow: bool) -> None:
    """The service's log (`journalctl --user -u NAME`; the log file on macOS).

    Example: cllm service logs -f
    """
    ctx.exit(manager().logs(name, lines, follow))
