"""The `cllm` command line: a thin layer over library calls, one module per command family.

    run.py      cllm agent, cllm status
    crawl.py    cllm crawl
    history.py  cllm history cycles|documents|urls|vocab|checkpoints|forgetting
    model.py    cllm train, generate, neighbours, bench
    chat.py     cllm chat (interactive, the server's generation code)
    serve.py    cllm serve (the HTTP API, agent/server/)
    db.py       cllm db upgrade|current
    common.py   shared options, the store opener, one-line errors, tables and JSON

Settings and their flags come from agent/settings.py. Library code raises CllmError and
StoreError; the commands turn them into one-line messages with a hint (exit status 2).
The main group hands --database-url to the commands in click's context object.
"""
from __future__ import annotations

import logging
from typing import Optional

import click

from agent.cli import chat, crawl, db, history, model, run, serve
from agent.cli.common import CONTEXT_SETTINGS, Invocation


@click.group(context_settings=CONTEXT_SETTINGS)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--database-url", metavar="URL", default=None,
              help="Any SQLAlchemy URL for the store, e.g. postgresql+psycopg://u:p@host/db "
                   "[$CLLM_DATABASE_URL, else a SQLite file in the data directory].")
@click.pass_context
def main(ctx: click.Context, verbose: int, database_url: Optional[str]) -> None:
    """Crystalline CLLM: a continuous-learning crawler agent with its own GPT engine.

    Example: cllm agent   (watches ./cllm-data/inbox and learns the sample corpus)
    """
    ctx.obj = Invocation(database_url=database_url)
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


COMMANDS = (
    run.agent, run.status,
    crawl.crawl,
    history.history,
    model.train, model.generate, model.neighbours, model.bench,
    chat.chat,
    serve.serve,
    db.db,
)
for _command in COMMANDS:
    main.add_command(_command)
