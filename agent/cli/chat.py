"""`cllm chat`: talk to the latest checkpoint in the terminal, with the generation code and
chat template the server uses (agent/generation/stream.py).

Line editing and history come from readline (kept in DATA_DIR/chat_history between runs);
Ctrl-C stops a reply (what came so far stays in the conversation), Ctrl-C at the prompt
clears the line, Ctrl-D quits.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import click

from agent.cli.common import (CONTEXT_SETTINGS, Invocation, data_dir_option, one_line_errors,
                              pass_invocation)
from agent.cli.model import (deprecated_max_tokens, load_for_generation, sampling,
                             sampling_options)
from agent.generation.stream import CHAT_STOPS, TextStream, chat_prompt

log = logging.getLogger(__name__)
HISTORY_FILE = "chat_history"


def reply(ckpt, messages: list[tuple[str, str]], sp, echo: Callable[[str], None]
          ) -> tuple[str, bool]:
    """Stream the assistant's answer to `messages` through `echo`; returns (its text,
    whether it ran to its end). Ctrl-C (KeyboardInterrupt) stops it where it is."""
    ts = TextStream(ckpt, chat_prompt(messages), sp)
    out = []
    try:
        for piece in ts:
            out.append(piece)
            echo(piece)
    except KeyboardInterrupt:
        return "".join(out), False
    return "".join(out), True


def _readline(data_dir: Path) -> Optional[Path]:
    """Turn on readline's line editing and history; returns the history file, if any."""
    try:
        import readline  # it changes input() for the whole process: only when chatting
    except ImportError:            # not on every platform: plain input() still works
        return None
    path = Path(data_dir) / HISTORY_FILE
    try:
        readline.read_history_file(path)
    except (FileNotFoundError, OSError):
        pass
    return path


def _save_history(path: Optional[Path]) -> None:
    if path is None:
        return
    import readline  # loaded by _readline, which gave `path`: see there

    try:
        readline.set_history_length(1000)
        readline.write_history_file(path)
    except OSError as e:
        log.warning("could not save the chat history to %s: %s", path, e)


@click.command("chat", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--system", default=None, help="A system message to start the conversation.")
@sampling_options
@pass_invocation
@one_line_errors
def chat(inv: Invocation, data_dir: Path, system, max_tokens, old_max_tokens, temperature,
         top_k, top_p, seed, stop, cycle, committed, decode_weights) -> None:
    """Chat with the latest checkpoint (or --checkpoint N's) in the terminal.

    Ctrl-C stops a reply, Ctrl-D quits.

    Example: cllm chat --data-dir ./cllm-data --temperature 0.7
    """
    ckpt = load_for_generation(inv, data_dir, cycle, decode_weights, committed)
    max_tokens = deprecated_max_tokens(max_tokens, old_max_tokens, "chat")
    sp = sampling(max_tokens, temperature, top_k, top_p, seed, stop, CHAT_STOPS)
    history = _readline(data_dir)
    click.echo(f"chatting with cycle {ckpt.cycle} (step {ckpt.step}"
               + (", a live snapshot" if ckpt.live is not None else "")
               + "); Ctrl-C stops a reply, Ctrl-D quits", err=True)
    messages: list[tuple[str, str]] = [("system", system)] if system else []
    try:
        while True:
            try:
                line = input("you> ")
            except KeyboardInterrupt:       # at the prompt: a fresh line
                click.echo("")
                continue
            except EOFError:
                click.echo("")
                break
            if not line.strip():
                continue
            messages.append(("user", line))
            click.echo("cllm> ", nl=False)
            text, finished = reply(ckpt, messages, sp,
                                   lambda p: click.echo(p, nl=False))
            click.echo("" if finished else " [stopped]")
            messages.append(("assistant", text.strip()))
    finally:
        _save_history(history)
