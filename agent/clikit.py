"""Shared pieces of the command line: context settings and the error wrapper that turns
CllmError (user mistakes) into one line with a hint. Imports nothing from the commands, so
every command module can use it without import cycles."""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from engine.errors import CllmError
from store.errors import StoreError

CONTEXT_SETTINGS = dict(help_option_names=["-h", "--help"], max_content_width=100)

data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="CLLM_DATA_DIR",
    default=Path("cllm-data"), show_default=True,
    help="Data directory: store, checkpoints, inbox (env CLLM_DATA_DIR).")


def existing_store(data_dir):
    """The store of `data_dir` (or $CLLM_DATABASE_URL), refusing to create one in a data
    directory where nothing was ever stored (a mistyped --data-dir)."""
    from store import StoreError, open_store
    from store.db import SQLITE_FILENAME

    if not (Path(data_dir) / SQLITE_FILENAME).exists() and not os.environ.get("CLLM_DATABASE_URL"):
        raise StoreError(f"no store in {data_dir}",
                         "start the agent (cllm agent --data-dir DIR), or pass the --data-dir "
                         "it uses")
    return open_store(data_dir)


def friendly_errors(fn):
    """Turn CllmError and StoreError (user mistakes) into a one-line message and exit status 2."""

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


def jsonable(v):
    """Datetimes as ISO 8601 strings (for json.dumps(default=...)); other values as they are."""
    return v.isoformat() if hasattr(v, "isoformat") else v
