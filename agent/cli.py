"""The `cllm` command line: a thin layer over library calls.

Library code raises CllmError subclasses; this module turns them into one-line messages
with a hint (exit status 2) instead of tracebacks. Command groups owned by other modules
register themselves below with `main.add_command(...)`.
"""
from __future__ import annotations

import logging
import os

import click

from agent.clikit import CONTEXT_SETTINGS


@click.group(context_settings=CONTEXT_SETTINGS)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--database-url", metavar="URL", default=None,
              help="Any SQLAlchemy URL for the store, e.g. postgresql+psycopg://u:p@host/db "
                   "[$CLLM_DATABASE_URL, else a SQLite file in the data directory].")
def main(verbose: int, database_url: str | None) -> None:
    """Crystalline CLLM: a continuous-learning crawler agent with its own GPT engine.

    Example: cllm agent   (watches ./cllm-data/inbox and learns the sample corpus)
    """
    if database_url:   # every command opens the store through $CLLM_DATABASE_URL
        os.environ["CLLM_DATABASE_URL"] = database_url
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- command registration (each owner adds one line) ---
from store.cli import db; main.add_command(db)  # noqa: E402,E702
from agent.commands import bench, generate, neighbours, train  # noqa: E402

main.add_command(train)
main.add_command(generate)
main.add_command(bench)
main.add_command(neighbours)
from agent.ingest_cli import crawl, history  # noqa: E402
main.add_command(crawl)
main.add_command(history)
from agent.history_cli import register as _register_agent  # noqa: E402
_register_agent(main)
