"""The `cllm` command line: a thin layer over library calls, one module per command family.

    run.py      cllm agent, cllm status
    crawl.py    cllm crawl
    history.py  cllm history cycles|documents|urls|vocab|checkpoints|forgetting
    model.py    cllm train, generate, neighbours, bench
    evaluate.py cllm eval (bits per byte, perplexity on files: agent/generation/perplexity.py)
    export.py   cllm models, cllm export (a checkpoint as GGUF or a Hugging Face folder)
    chat.py     cllm chat (interactive, the server's generation code)
    serve.py    cllm serve (the HTTP API, agent/server/), cllm token
    service.py  cllm service install|uninstall|status|logs (a systemd --user unit, launchd)
    db.py       cllm db upgrade|current
    common.py   shared options, the store opener, one-line errors, tables and JSON
    logs.py     logging set up once: the project's loggers by -v, other libraries quiet

Settings and their flags come from agent/settings.py. Library code raises CllmError and
StoreError; the commands turn them into one-line messages with a hint and an exit status
(common.exit_status: 1 a runtime failure, 2 a usage error, 3 another agent holds the data
directory).
The main group hands --database-url to the commands in click's context object.

Imports sit at the top of each module, except the modules of what one command alone runs:
the daemon, the trainer (agent/continuous_trainer.py, agent/training/), the crawler and
agent/inputs/, the benchmark, the generation code, and the optional extras (matplotlib).
The commands import those inside their functions: this group imports every command module,
so each invocation then loads what it runs and not what the other commands run.
"""
from __future__ import annotations

import click

from agent.cli import chat, crawl, db, evaluate, export, history, model, run, serve, service
from agent.cli.common import CONTEXT_SETTINGS, Invocation, configure_logging, global_options


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="crystalline-cllm", prog_name="cllm",
                      message="%(prog)s %(version)s")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Crystalline CLLM: a continuous-learning crawler agent with its own GPT engine.

    Example: cllm agent   (watches ~/.local/share/cllm/inbox and learns the sample corpus)
    """
    configure_logging(ctx.ensure_object(Invocation))
    _join_mpi_job(ctx)


def _join_mpi_job(ctx: click.Context) -> None:
    """Under `mpiexec -n R cllm ...`: rank 0 runs the command and leads the training; the
    other ranks follow its cycles and never run the command (nor import the store). A plain
    run imports no MPI at all."""
    from engine.distributed import follow, shutdown
    from engine.mpi import world

    group = world()
    if group is None:
        return
    if not group.is_root:
        ctx.exit(follow(group))
    ctx.call_on_close(lambda: shutdown(group))


COMMANDS = (
    run.agent, run.status,
    crawl.crawl,
    history.history,
    model.train, model.generate, model.neighbours, model.bench,
    evaluate.evaluate,
    export.models, export.export,
    chat.chat,
    serve.serve, serve.token_command,
    service.service,
    db.db,
)
for _command in COMMANDS:
    main.add_command(_command)


def _leaves(group: click.Group):
    for cmd in group.commands.values():
        if isinstance(cmd, click.Group):
            yield from _leaves(cmd)
        else:
            yield cmd


# -v, -q and --database-url before the subcommand (the group's) and after it (each command's)
main.params.extend(global_options())
for _command in _leaves(main):
    _command.params.extend(global_options())
