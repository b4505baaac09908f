"""What every `cllm` command shares: context settings, the common options, the invocation
object the main group hands down (the --database-url), opening an existing store, the
one-line error wrapper and table/JSON output.

Imports nothing from the command modules, so each of them can use it.
"""
from __future__ import annotations

import errno
import functools
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import click
from rich.console import Console
from rich.table import Table

from agent.cli import logs
from agent.datadir import default_data_dir, shown
from agent.reports import jsonable  # noqa: F401  (the commands import it from here)
from agent.training.trainer_lease import AgentLocked
from engine import PRESETS
from engine.checkpoint import read_model_config
from engine.errors import CllmError, ConfigError
from store import open_store
from store.db import resolve_url, sqlite_path
from store.errors import StoreError

CONTEXT_SETTINGS = dict(help_option_names=["-h", "--help"], max_content_width=100)

data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="CLLM_DATA_DIR",
    default=default_data_dir, show_default=f"{shown(default_data_dir())}, the user data directory",
    help="Data directory: store, checkpoints, inbox (env CLLM_DATA_DIR).")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print JSON (a list of objects).")


@dataclass
class Invocation:
    """What the main group hands its commands as click's context object. The options that
    fill it are taken before the subcommand and after it alike (`global_options`)."""

    database_url: Optional[str] = None   # --database-url: the store's URL (None: the default)
    verbose: int = 0                     # -v count
    quiet: int = 0                       # -q count

    def log_level(self) -> int:
        """WARNING by default; each -v one level more (to DEBUG), each -q one less."""
        return min(logging.CRITICAL, max(logging.DEBUG,
                                         logging.WARNING + 10 * (self.quiet - self.verbose)))


def configure_logging(inv: Invocation) -> None:
    """The project's loggers by -v/-q, other libraries quiet (agent/cli/logs.py)."""
    logs.configure_logging(inv.verbose - inv.quiet)


def _set_global(ctx: click.Context, param: click.Parameter, value):
    inv = ctx.ensure_object(Invocation)
    if param.name == "database_url":
        if value is not None:
            inv.database_url = value
    elif value:
        setattr(inv, param.name, getattr(inv, param.name) + value)
    configure_logging(inv)
    return value


def global_options() -> list[click.Option]:
    """-v, -q and --database-url: the options of the main group, which every subcommand
    takes too (after its name: `cllm status -v --database-url URL`)."""
    return [
        click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_set_global,
                     help="More log output (-vv for debug)."),
        click.Option(["-q", "--quiet"], count=True, expose_value=False, callback=_set_global,
                     help="Less log output: errors only (-qq: critical only)."),
        click.Option(["--database-url"], metavar="URL", default=None, expose_value=False,
                     callback=_set_global,
                     help="Any SQLAlchemy URL for the store, e.g. "
                          "postgresql+psycopg://u:p@host/db [$CLLM_DATABASE_URL, else a SQLite "
                          "file in the data directory]."),
    ]


# `@pass_invocation` passes the Invocation first; a command invoked without the main group
# (CliRunner().invoke(db, ...)) gets a default one
pass_invocation = click.make_pass_decorator(Invocation, ensure=True)


def existing_store(data_dir: Path, url: Optional[str] = None, **kwargs):
    """The store of `data_dir` (or of `url`) for a command that only reads: refusing to
    create the SQLite file of a data directory where nothing was ever stored (a mistyped
    --data-dir), or one a sqlite URL names. `kwargs` go to open_store."""
    path = sqlite_path(resolve_url(data_dir, url))
    if path is not None and not path.exists():
        where = (f"no store in {data_dir}" if url is None and not os.environ.get("CLLM_DATABASE_URL")
                 else f"no store at {path}")
        raise StoreError(where, "start the agent (cllm agent --data-dir DIR), or pass the "
                                "--data-dir (or --database-url) it uses")
    return open_store(data_dir, url, **kwargs)


# exit statuses of every command: 0 success, EXIT_FAILURE a runtime failure, EXIT_USAGE a
# usage or configuration error (click's own status for bad options), EXIT_LOCKED another
# agent (or trainer) holds the data directory, EXIT_INTERRUPTED Ctrl-C before work began
EXIT_FAILURE, EXIT_USAGE, EXIT_LOCKED, EXIT_INTERRUPTED = 1, 2, 3, 130
# a file system refusing a write (read-only, permissions, full): the user's situation, one line
FILESYSTEM_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
                               errno.EDQUOT})


def exit_status(e: BaseException) -> int:
    """The exit status for an error a command reports in one line."""
    from agent.crawler import CrawlError

    if isinstance(e, AgentLocked):
        return EXIT_LOCKED
    if isinstance(e, (ConfigError, CrawlError)):   # a bad option, setting or target
        return EXIT_USAGE
    return EXIT_FAILURE


def preset_of(config) -> str:
    """The preset a model config was made from (its vocabulary grows), or "custom"."""
    shape = ("context", "d_model", "n_layers", "n_heads")
    return next((name for name, p in PRESETS.items()
                 if all(getattr(p, k) == getattr(config, k) for k in shape)), "custom")


def warn_if_preset_ignored(values, data_dir: Path, *, fresh_flag: Optional[str] = None) -> None:
    """A warning line when --preset or --arch (or $CLLM_*, or TOML) names a model other than
    the one the data directory already holds: the directory's model wins (its checkpoints
    record its architecture; nothing converts it)."""
    from agent.training.model_state import checkpoint_files
    from engine.config import arch_text, parse_arch

    if not (values.given("preset") or values.given("arch")):
        return
    ckpts = checkpoint_files(data_dir)
    if not ckpts:
        return
    try:
        cfg = read_model_config(ckpts[-1])
    except CllmError:
        return                  # an unreadable checkpoint is reported when it is loaded
    how = (f"pass {fresh_flag} or another --data-dir" if fresh_flag
           else "pass another --data-dir (or delete this one)")
    have = preset_of(cfg)
    if values.given("preset") and have != values["preset"]:
        click.echo(f"warning: preset {values['preset']} (from {values.where['preset']}) is "
                   f"ignored: {data_dir} already holds a {have} model, which resumes; to start "
                   f"a fresh {values['preset']} model, {how}", err=True)
    if values.given("arch"):
        want = arch_text(cfg.replace(**parse_arch(values["arch"] or "")))
        if want != arch_text(cfg):
            click.echo(f"warning: --arch {values['arch'] or '(GPT-2)'} (from "
                       f"{values.where['arch']}) is ignored: {data_dir} already holds a model "
                       f"of architecture {arch_text(cfg) or 'GPT-2'}, which resumes; to start "
                       f"a fresh model, {how}", err=True)


def read_view(inv: "Invocation", data_dir: Path, view, *args, **kwargs):
    """`view(session, *args, **kwargs)` (an agent/reports.py row builder) in a read-only
    session of the data directory's existing store, which is closed afterwards."""
    store = existing_store(data_dir, inv.database_url)
    try:
        with store.session(read_only=True) as s:
            return view(s, *args, **kwargs)
    finally:
        store.close()


def one_line_errors(fn):
    """Turn CllmError and StoreError (what a user can fix) into `Error: message (hint: ...)`
    on stderr and the command's exit status (exit_status), instead of a traceback; a Ctrl-C
    that reaches here (during start-up, before a command installs its own handlers) is one
    line and status 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (CllmError, StoreError) as e:
            click.echo(f"Error: {e.one_line()}", err=True)
            sys.exit(exit_status(e))
        except OSError as e:
            if e.errno not in FILESYSTEM_ERRNOS:
                raise
            where = f" {e.filename}" if e.filename else ""
            click.echo(f"Error: cannot write{where}: {e.strerror} (hint: check the space and "
                       "permissions there, or pass another --data-dir)", err=True)
            sys.exit(EXIT_FAILURE)
        except KeyboardInterrupt:
            click.echo("interrupted (hint: what the store committed is kept; run the command "
                       "again)", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def table_cell(column: str, value) -> str:
    """A table cell: floats to 3 decimals, paths to their file name, hashes to 12 digits,
    token text with its whitespace and control characters visible."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    if column == "checkpoint_path":
        return os.path.basename(str(value))
    if column.endswith("sha256"):
        return str(value)[:12]
    if column == "token":
        return repr(value)[1:-1].replace(" ", "\u2423")
    return str(value)


def emit_table(rows: list[dict], as_json: bool, columns: list[str], title: str) -> None:
    """Rows as JSON (every field) or as a table of `columns` (rich; full width when piped)."""
    if as_json:
        echo_json(rows)
        return
    table = Table(*columns, title=title)
    for r in rows:
        table.add_row(*(table_cell(c, r.get(c)) for c in columns))
    console = Console()
    if not console.is_terminal:        # piped: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(table)


JSON_INDENT = 2     # every command's --json output is indented alike


def echo_json(obj) -> None:
    """Print `obj` as the JSON every command prints: indented by JSON_INDENT, datetimes as
    ISO 8601 (jsonable, agent/reports.py), numpy scalars as numbers."""
    click.echo(json.dumps(obj, indent=JSON_INDENT, default=jsonable))
