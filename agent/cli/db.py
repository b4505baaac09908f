"""`cllm db`: the store's database from the command line (migrations, where it lives).

A thin layer over store.open_store; StoreErrors come out as one line with a hint and exit
status 1. The database is `--database-url` (before or after the subcommand), else
$CLLM_DATABASE_URL, else the SQLite file of the data directory.
"""
from __future__ import annotations

from pathlib import Path

import click

from agent.cli.common import (CONTEXT_SETTINGS, Invocation, data_dir_option, echo_json,
                              existing_store, one_line_errors, pass_invocation)
from store import open_store




@click.group(context_settings=CONTEXT_SETTINGS)
def db() -> None:
    """The store's database: schema migrations and where it lives.

    Example: cllm db current --data-dir ./cllm-data
    """


@db.command(context_settings=CONTEXT_SETTINGS)
@data_dir_option
@pass_invocation
@one_line_errors
def upgrade(inv: Invocation, data_dir: Path) -> None:
    """Apply pending schema migrations (every command also does this when it opens the store).

    Example: cllm db upgrade --database-url postgresql+psycopg://me:pw@localhost/cllm
    """
    with open_store(data_dir, inv.database_url, upgrade=False) as st:
        before, head = st.upgrade()
        if before == (head,):
            click.echo(f"{st.describe()}: already at revision {head}")
        else:
            click.echo(f"{st.describe()}: upgraded from {', '.join(before) or 'an empty database'}"
                       f" to revision {head}")


@db.command(context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_invocation
@one_line_errors
def current(inv: Invocation, data_dir: Path, as_json: bool) -> None:
    """Show which database the store uses, its schema revision and the newest one known
    (reads only: a data directory without a store is an error, never a new empty store).

    Example: cllm db current --data-dir ./cllm-data --json
    """
    with existing_store(data_dir, inv.database_url, upgrade=False) as st:
        revs, head = st.schema_state()
        info = {"database": st.describe(), "backend": st.engine.dialect.name,
                "revision": ", ".join(revs) or None, "head": head,
                "up_to_date": revs == (head,)}
    if as_json:
        echo_json(info)
        return
    state = "up to date" if info["up_to_date"] else "behind: run `cllm db upgrade`"
    click.echo(f"database: {info['database']} ({info['backend']})\n"
               f"revision: {info['revision'] or 'none (empty)'}, newest known {head}, {state}")
