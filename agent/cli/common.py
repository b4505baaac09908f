"""What every `cllm` command shares: context settings, the common options, the invocation
object the main group hands down (the --database-url), opening an existing store, the
one-line error wrapper and table/JSON output.

Imports nothing from the command modules, so each of them can use it.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import click

from agent.views import jsonable  # noqa: F401  (the commands import it from here)
from engine.errors import CllmError
from store.errors import StoreError

CONTEXT_SETTINGS = dict(help_option_names=["-h", "--help"], max_content_width=100)

data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="CLLM_DATA_DIR",
    default=Path("cllm-data"), show_default=True,
    help="Data directory: store, checkpoints, inbox (env CLLM_DATA_DIR).")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print JSON (a list of objects).")


@dataclass
class Invocation:
    """What the main group hands its commands as click's context object."""

    database_url: Optional[str] = None   # --database-url: the store's URL (None: the default)


# `@pass_invocation` passes the Invocation first; a command invoked without the main group
# (CliRunner().invoke(db, ...)) gets a default one
pass_invocation = click.make_pass_decorator(Invocation, ensure=True)


def existing_store(data_dir: Path, url: Optional[str] = None):
    """The store of `data_dir` (or of `url`), refusing to create the SQLite file of a data
    directory where nothing was ever stored (a mistyped --data-dir)."""
    from store import open_store
    from store.db import SQLITE_FILENAME, resolve_url, sqlite_path

    default_file = Path(data_dir).expanduser().resolve() / SQLITE_FILENAME
    if sqlite_path(resolve_url(data_dir, url)) == default_file and not default_file.exists():
        raise StoreError(f"no store in {data_dir}",
                         "start the agent (cllm agent --data-dir DIR), or pass the --data-dir "
                         "it uses")
    return open_store(data_dir, url)


def one_line_errors(fn):
    """Turn CllmError and StoreError (user mistakes) into `Error: message (hint: ...)` on
    stderr and exit status 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (CllmError, StoreError) as e:
            click.echo(f"Error: {e.one_line()}", err=True)
            sys.exit(2)

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
        click.echo(json.dumps(rows, indent=2, default=jsonable))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title)
    for r in rows:
        table.add_row(*(table_cell(c, r.get(c)) for c in columns))
    console = Console()
    if not console.is_terminal:        # piped: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(table)
