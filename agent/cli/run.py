"""`cllm agent` (start the daemon on a data directory) and `cllm status` (what it is doing).

Thin commands: the daemon is agent/daemon.py, its settings come from agent/settings.py.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import click

from agent.cli.common import (CONTEXT_SETTINGS, Invocation, data_dir_option,
                              echo_json, existing_store, json_option, one_line_errors,
                              pass_invocation, warn_if_preset_ignored)
from agent.cli.logs import log_file
from agent.cli.serve import SERVE_OPTIONS, serve_config, serve_options
from agent.reports import status_view
from agent.server import require_serve_extra
from agent.server.security import token_path
from agent.resolve import options, resolve
from agent.settings import AgentConfig, TrainerSettings, build
from agent.signals import stop_on_signals
from engine.errors import CllmError


@click.command("agent", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@options("agent")
@click.option("--serve", "serve", is_flag=True,
              help="Also run the HTTP server of `cllm serve` (its options below).")
@serve_options
@pass_invocation
@one_line_errors
def agent(inv: Invocation, data_dir: Path, serve: bool, **flags) -> None:
    """Run the agent: watch folders, crawl targets, train in cycles; stop with Ctrl-C.

    Settings come from flags, then CLLM_* environment variables, then DATA_DIR/cllm.toml
    (or --config), then the user config file (~/.config/cllm/cllm.toml), as for every
    command.
    One agent per data directory; it resumes from the latest checkpoint. With nothing to
    watch or crawl configured anywhere it runs on embedded defaults: it watches
    DATA_DIR/inbox (drop text files there) and learns the shipped sample corpus.

    With --serve the agent also answers HTTP (see `cllm serve`), reloading the served model
    after each committed cycle.

    Training runs at a low CPU and I/O priority (--priority), on the CPUs the process may
    use (--cpu-share of them), and pauses on battery (--pause-on-battery) or under load
    (--pause-above-load). To run it as a service: `cllm service install`.

    Example: cllm agent --data-dir ./cllm-data --watch ~/notes --preset small --serve
    """
    from agent.daemon import Agent

    serve_cfg = None
    server_flags = {k: flags.pop(k) for k in SERVE_OPTIONS}
    if serve:
        require_serve_extra()
        serve_cfg = serve_config(**server_flags)     # checked: check_binding
    values = resolve(flags, data_dir)
    warn_if_preset_ignored(values, data_dir)
    if not inv.quiet:  # the agent reports its cycles unless told to be quiet (-q)
        logging.getLogger("agent").setLevel(min(logging.INFO, inv.log_level()))
    trainer = build(TrainerSettings, values)
    if not values["watch"] and not values["crawl"] and values["role"] != "train":
        values["watch"], values["crawl"] = embedded_targets(Path(data_dir))
        click.echo(f"embedded defaults: watching {values['watch'][0]} (drop text files there)"
                   + (f" and learning the sample corpus in {Path(values['crawl'][0]).parent}"
                      if values["crawl"] else ""),
                   err=True)
    cfg = build(AgentConfig, values, data_dir=Path(data_dir), trainer=trainer,
                database_url=inv.database_url)
    stop = threading.Event()
    a = Agent(cfg, stop=stop, serve=serve_cfg)
    with log_file(cfg.log_file, cfg.log_file_bytes, cfg.log_file_count), \
            stop_on_signals(stop, sigterm=True, announce=True):
        a.run()
    click.echo(f"agent stopped after {a.cycles_completed} cycles", err=True)


def embedded_targets(data_dir: Path) -> tuple[list[str], list[str]]:
    """The defaults when nothing is configured: watch DATA_DIR/inbox (created), crawl the
    shipped sample corpus's topic folders when they are installed alongside the code."""
    from agent.inputs.corpus import corpus_topics
    from agent.inputs.paths import OWN_INBOX    # the one input inside the data directory

    inbox = data_dir / OWN_INBOX
    try:
        inbox.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CllmError(f"cannot create {inbox}: {e.strerror}",
                        "choose a writable --data-dir or pass --watch DIR") from None
    # one crawl target (so one source, with its own validation and forgetting) per topic
    return [str(inbox)], [str(p) for p in corpus_topics()]


@click.command("status", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@json_option
@pass_invocation
@one_line_errors
def status(inv: Invocation, data_dir: Path, as_json: bool) -> None:
    """What the agent of a data directory is doing. Prints, one line each:

    \b
      data directory  the folder read (and the store, when it lives elsewhere)
      agent           running (with its pid) or not
      training        paused and why (a user, on battery, the machine's load), or its phase
                      and why: learning, consolidating (keeps training past --passes while
                      the held-out loss improves), converged, idle
      cycle           the running cycle: step of planned steps, loss, documents
                      (or that a dead agent left it, to be recovered on the next start)
      backlog         documents and bytes still to learn, tokens/s and ETA, per source
      pending         documents waiting for a cycle, and the documents by status
      cycles          how many completed
      trainer         the process holding the store's trainer lease, when not this agent
      last checkpoint its file, cycle, step, vocabulary and SHA-256
      live snapshot   the running cycle's served weights, when generate and serve load
                      them instead of the last checkpoint
      server token    where the token `cllm serve` requires is kept (`cllm token` prints it)

    --json prints the same as one object.

    Example: cllm status --data-dir ./cllm-data
    """
    store = existing_store(data_dir, inv.database_url)
    store_name = store.describe()
    try:
        with store.session(read_only=True) as s:
            out = status_view(s, data_dir, store_name)
    finally:
        store.close()
    pid, current, backlog = out["pid"], out["current_cycle"], out["backlog"]
    pending, pending_bytes = out["pending_documents"], out["pending_bytes"]
    counts, completed, last_ckpt = out["documents"], out["cycles_completed"], out["last_checkpoint"]
    trainer = out["trainer"]
    if as_json:
        echo_json(out)
        return
    click.echo(f"data directory: {out['data_dir']}"
               + (f" (store: {store_name})" if store_name != str(Path(out['data_dir'])
                                                            / "cllm.sqlite3") else ""))
    click.echo(f"agent: {'running, pid ' + str(pid) if pid else 'not running'}")
    phase = out.get("training_phase")
    if out["paused_by"]:
        why = (phase["reason"] if pid and phase and phase["phase"] == "paused"
               else "paused by a user")
        click.echo(f"training is paused: {why}"
                   + (" (resume it from the dashboard or POST /api/training)"
                      if "user" in out["paused_by"] else ""))
    elif phase and pid:
        click.echo(f"training: {out['training_phase']['phase']} "
                   f"({out['training_phase']['reason']})")
    if trainer is not None and not trainer["expired"] and trainer["pid"] != pid:
        where = f" on {trainer['data_dir']}" if trainer["data_dir"] else ""
        click.echo(f"trainer of this store: pid {trainer['pid']} on host {trainer['host']}{where}")
    if current and current["stale"]:
        click.echo(f"cycle {current['id']} was interrupted at step {current['step']} (the agent "
                   "died); nothing it trained was counted and the next agent start recovers it")
    elif current:
        click.echo(f"cycle {current['id']} ({current['trigger']}): step {current['step']}/"
                   f"{current['steps'] or '?'}, loss {current['loss'] or float('nan'):.3f}, "
                   f"{current['documents']} documents")
    else:
        click.echo("no cycle running")
    if backlog["documents"]:
        eta = backlog["eta_s"]
        click.echo(f"backlog: {backlog['documents']} documents, {backlog['bytes']:,} bytes to "
                   f"learn ({backlog['passes']:g} passes each)"
                   + (f", {backlog['tokens_per_s']:,.0f} tokens/s, ETA {_duration(eta)}"
                      if eta else ""))
        for src in backlog["sources"]:
            if src["documents"]:
                click.echo(f"  {src['source']}: {src['trained']} trained, {src['documents']} "
                           f"to learn ({src['bytes']:,} bytes)")
    else:
        click.echo("backlog: nothing to learn")
    click.echo(f"pending: {pending} documents ({pending_bytes or 0} bytes); "
               + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    click.echo(f"cycles completed: {completed}")
    if last_ckpt:
        click.echo(f"last checkpoint: {last_ckpt['path']} (cycle {last_ckpt['cycle_id']}, step "
                   f"{last_ckpt['step']}, vocabulary {last_ckpt['vocab_size']}, sha256 "
                   f"{last_ckpt['sha256'][:16]}...)")
    else:
        click.echo("last checkpoint: none")
    live = out["live_snapshot"]
    if live:
        click.echo(f"live snapshot: cycle {live['cycle_id']}, step {live['step']} "
                   f"({live['cycle_step']} steps into the cycle; generate and serve load it)")
    token_file = token_path(data_dir)
    click.echo(f"server token: {token_file} (`cllm token` prints it)" if token_file.is_file()
               else "server token: none yet (the first `cllm serve` or `cllm token` makes it)")


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
