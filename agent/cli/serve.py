"""`cllm serve`: the HTTP API over a data directory (agent/server/), beside or without an agent.

A thin command: it opens the existing store, builds the server and runs it until Ctrl-C. The
options' defaults are ServeConfig's and Limits' (agent/server/config.py). `cllm token`
prints the token clients send (agent/server/security.py keeps it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click
from click.core import ParameterSource

from agent.cli.common import (CONTEXT_SETTINGS, Invocation, data_dir_option, existing_store,
                              one_line_errors, pass_invocation)
from agent.cli.model import decode_weights_option
from agent.server import require_serve_extra
from agent.server.config import Limits, ServeConfig
from agent.server.security import (AUTH_MODES, check_binding, check_token, data_dir_token,
                                   read_token_file, token_path)
from engine.errors import ConfigError


def serve_options(fn):
    """The server's options (shared with `cllm agent --serve`)."""
    for opt in reversed([
        click.option("--host", default=ServeConfig.host, show_default=True,
                     help="Address to listen on; anything but loopback needs TLS "
                          "(--tls-cert/--tls-key) or --allow-http."),
        click.option("--port", type=click.IntRange(0, 65535), default=ServeConfig.port,
                     show_default=True),
        click.option("--token", envvar=["CLLM_TOKEN", "CLLM_SERVE_TOKEN"], default=None,
                     help="The token clients send as 'Authorization: Bearer TOKEN' "
                          "[$CLLM_TOKEN]. Default: the data directory's own (DATA_DIR/"
                          "cllm.token, made on first start; `cllm token` prints it). Given "
                          "on the command line it shows in `ps`: prefer $CLLM_TOKEN or "
                          "--token-file."),
        click.option("--token-file", "token_file", default=None,
                     type=click.Path(dir_okay=False, path_type=Path),
                     help="Read the token from this file."),
        click.option("--auth", type=click.Choice(AUTH_MODES), default=ServeConfig.auth,
                     show_default=True,
                     help="none: no token on loopback (anyone on this machine may use the "
                          "server and steer the agent); beyond loopback the token is always "
                          "required."),
        click.option("--tls-cert", "tls_cert", default=None,
                     type=click.Path(dir_okay=False, path_type=Path),
                     help="Serve HTTPS with this certificate (PEM; with --tls-key)."),
        click.option("--tls-key", "tls_key", default=None,
                     type=click.Path(dir_okay=False, path_type=Path),
                     help="The certificate's private key (PEM)."),
        click.option("--allow-http", "allow_http", is_flag=True,
                     help="Listen beyond loopback without TLS (a trusted network, or a TLS "
                          "proxy in front): the token then travels in clear."),
        click.option("--cors", multiple=True, metavar="ORIGIN",
                     help="Allow browser pages of this origin (repeatable); none by default."),
        click.option("--allowed-host", "allowed_host", multiple=True, metavar="NAME",
                     help="Another Host name requests may use (e.g. behind a proxy; "
                          "--cors its origin too, for the dashboard's buttons)."),
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


SERVE_OPTIONS = ("host", "port", "token", "token_file", "auth", "tls_cert", "tls_key",
                 "allow_http", "cors", "allowed_host", "max_tokens", "concurrency",
                 "queue_timeout", "request_timeout", "max_connections", "decode_weights",
                 "committed")


def given_token(token: Optional[str], token_file: Optional[Path]) -> Optional[str]:
    """The token the options give (None: the data directory's own). --token on the command
    line is taken with a warning: every user of the machine sees it in `ps`."""
    if token is not None and token_file is not None:
        raise ConfigError("--token (or $CLLM_TOKEN) and --token-file both give a token",
                          "pass one of them")
    if token_file is not None:
        return read_token_file(token_file)
    if token is None:
        return None
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.get_parameter_source("token") == ParameterSource.COMMANDLINE:
        click.echo("warning: --token on the command line shows in `ps` to every user of "
                   "this machine; use $CLLM_TOKEN or --token-file", err=True)
    return check_token(token, "--token")


def serve_config(host, port, token, cors, allowed_host, max_tokens, concurrency, queue_timeout,
                 request_timeout=Limits.request_timeout, max_connections=Limits.max_connections,
                 decode_weights=ServeConfig.decode_weights, committed: bool = False,
                 cycle: Optional[int] = None, token_file: Optional[Path] = None,
                 auth: str = ServeConfig.auth, tls_cert: Optional[Path] = None,
                 tls_key: Optional[Path] = None, allow_http: bool = False):
    cfg = ServeConfig(host=host, port=port, token=given_token(token, token_file), auth=auth,
                      tls_cert=tls_cert, tls_key=tls_key, allow_http=allow_http,
                      cors=tuple(cors), allowed_hosts=tuple(allowed_host), cycle=cycle,
                      committed=committed, decode_weights=decode_weights,
                      limits=Limits(max_tokens=max_tokens,
                                    default_max_tokens=min(Limits.default_max_tokens,
                                                           max_tokens),
                                    concurrency=concurrency, queue_timeout=queue_timeout,
                                    request_timeout=request_timeout,
                                    max_connections=max_connections))
    check_binding(cfg)
    return cfg


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
        click.echo(f"dashboard: {server.dashboard_url}", err=True)
        click.echo(server.token_hint(), err=True)
        try:
            server.run()
        except KeyboardInterrupt:
            pass
    finally:
        store.close()
    click.echo("server stopped", err=True)


@click.command("token", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--path", "show_path", is_flag=True, help="Print the token file's path instead.")
@pass_invocation
@one_line_errors
def token_command(inv: Invocation, data_dir: Path, show_path: bool) -> None:
    """Print the token `cllm serve` and `cllm agent --serve` require of clients: the data
    directory's own, kept in DATA_DIR/cllm.token (mode 0600; made now if there is none yet).
    Clients send it as 'Authorization: Bearer TOKEN' (the OpenAI client's api_key); the
    dashboard opens with /?token=TOKEN once.

    Example: OPENAI_API_KEY=$(cllm token) python my_client.py
    """
    if not Path(data_dir).is_dir():
        raise ConfigError(f"no data directory {data_dir}",
                          "start the agent (cllm agent --data-dir DIR), or pass the "
                          "--data-dir it uses")
    value = data_dir_token(data_dir)
    click.echo(str(token_path(data_dir)) if show_path else value)
