"""`cllm serve`: the HTTP API over a data directory (agent/server/), beside or without an agent.

A thin command: it opens the existing store, builds the server and runs it until Ctrl-C. The
options' defaults are ServeConfig's and Limits' (agent/server/config.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from agent.cli.common import (CONTEXT_SETTINGS, Invocation, data_dir_option, existing_store,
                              one_line_errors, pass_invocation)
from agent.cli.model import decode_weights_option
from agent.server import require_serve_extra
from agent.server.config import Limits, ServeConfig


def serve_options(fn):
    """The server's options (shared with `cllm agent --serve`)."""
    for opt in reversed([
        click.option("--host", default=ServeConfig.host, show_default=True,
                     help="Address to listen on; anything but loopback needs --token."),
        click.option("--port", type=click.IntRange(0, 65535), default=ServeConfig.port,
                     show_default=True),
        click.option("--token", envvar="CLLM_SERVE_TOKEN", default=None,
                     help="Require 'Authorization: Bearer TOKEN' [$CLLM_SERVE_TOKEN]."),
        click.option("--cors", multiple=True, metavar="ORIGIN",
                     help="Allow browser pages of this origin (repeatable); none by default."),
        click.option("--allowed-host", "allowed_host", multiple=True, metavar="NAME",
                     help="Another Host name requests may use (e.g. behind a proxy)."),
        click.option("--max-tokens", "max_tokens", type=click.IntRange(min=1),
                     default=Limits.max_tokens, show_default=True,
                     help="The most tokens one request may generate."),
        click.option("--concurrency", type=click.IntRange(min=1), default=Limits.concurrency,
                     show_default=True,
                     help="Generations at once; others wait --queue-timeout, then get 429."),
        click.option("--queue-timeout", "queue_timeout", type=click.FloatRange(min=0),
                     default=Limits.queue_timeout, show_default=True,
                     help="Seconds a request waits for a slot."),
        click.option("--request-timeout", "request_timeout", type=click.FloatRange(min=1),
                     default=Limits.request_timeout, show_default=True,
                     help="Seconds a generation may hold its slot; then it ends (finish "
                          "reason 'cancelled'), whether or not its client reads."),
        click.option("--max-connections", "max_connections", type=click.IntRange(min=2),
                     default=Limits.max_connections, show_default=True,
                     help="Open connections at most; one more closes the oldest that has "
                          "not sent its request yet."),
        decode_weights_option,
        click.option("--committed", is_flag=True,
                     help="Serve committed checkpoints only, never the running cycle's live "
                          "snapshot."),
    ]):
        fn = opt(fn)
    return fn


SERVE_OPTIONS = ("host", "port", "token", "cors", "allowed_host", "max_tokens", "concurrency",
                 "queue_timeout", "request_timeout", "max_connections", "decode_weights",
                 "committed")


def serve_config(host, port, token, cors, allowed_host, max_tokens, concurrency, queue_timeout,
                 request_timeout=Limits.request_timeout, max_connections=Limits.max_connections,
                 decode_weights=ServeConfig.decode_weights, committed: bool = False,
                 cycle: Optional[int] = None):
    return ServeConfig(host=host, port=port, token=token, cors=tuple(cors),
                       allowed_hosts=tuple(allowed_host), cycle=cycle, committed=committed,
                       decode_weights=decode_weights,
                       limits=Limits(max_tokens=max_tokens,
                                     default_max_tokens=min(Limits.default_max_tokens,
                                                            max_tokens),
                                     concurrency=concurrency, queue_timeout=queue_timeout,
                                     request_timeout=request_timeout,
                                     max_connections=max_connections))


@click.command("serve", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@serve_options
@click.option("--checkpoint", "cycle", type=int, default=None, metavar="N",
              help="Serve cycle N's checkpoint (default: the latest, reloaded as new ones "
                   "are committed, or the running cycle's live snapshot, reloaded as the "
                   "agent publishes them).")
@pass_invocation
@one_line_errors
def serve(inv: Invocation, data_dir: Path, cycle: Optional[int], **opts) -> None:
    """Serve the latest checkpoint over HTTP (OpenAI-compatible /v1/completions and
    /v1/chat/completions, /v1/models, /health), reloading it after each committed cycle and
    each live snapshot of the running one (--committed: committed checkpoints only).

    Example: cllm serve --data-dir ./cllm-data --port 8765
    """
    require_serve_extra()
    from agent.server.app import Server, Service  # the serve extra: checked just above

    cfg = serve_config(cycle=cycle, **opts)
    store = existing_store(data_dir, inv.database_url)
    try:
        server = Server(Service(store, data_dir, cfg), log_level="info")
        click.echo(f"serving {data_dir} on {server.url} (Ctrl-C stops)", err=True)
        try:
            server.run()
        except KeyboardInterrupt:
            pass
    finally:
        store.close()
    click.echo("server stopped", err=True)
