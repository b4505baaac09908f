"""`cllm eval`: bits per byte, bits per token and perplexity of the served model on files, as a
table or JSON; a thin command over agent/generation/perplexity.py and the checkpoint
`cllm generate` loads (agent/cli/model.py's load_for_generation).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from agent.cli.common import (CONTEXT_SETTINGS, Invocation, data_dir_option, echo_json,
                              emit_table, existing_store, one_line_errors, pass_invocation)
from engine.errors import ConfigError

COLUMNS = ["path", "bytes", "tokens", "nats", "bits_per_byte", "bits_per_token", "perplexity",
           "skipped"]


def _checkpoint(inv: Invocation, data_dir: Path, cycle: Optional[int]):
    """The checkpoint `cllm generate --committed` would use (its float32 parameters: what
    the trainer evaluates; never a live snapshot, so a score names a checkpoint that stays);
    a store without one is a usage error here, as a missing cycle is."""
    from agent.cli.model import load_for_generation
    from agent.training.model_state import recorded_checkpoints

    store = existing_store(data_dir, inv.database_url)
    try:
        if not recorded_checkpoints(store):
            raise ConfigError(f"no checkpoint in {data_dir}",
                              f"train one first (cllm train PATH --data-dir {data_dir}), or "
                              "pass the --data-dir the agent uses")
    finally:
        store.close()
    return load_for_generation(inv, data_dir, cycle, "float32", committed=True)


@click.command("eval", context_settings=CONTEXT_SETTINGS)
@click.argument("paths", nargs=-1, required=True, metavar="FILE|DIR...")
@data_dir_option
@click.option("--cycle", type=int, default=None, metavar="N",
              help="Score cycle N's checkpoint (default: the latest).")
@click.option("--max-bytes", type=click.IntRange(min=1), default=None, metavar="N",
              help="Score only the first N bytes of each file's text (default: all of it).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: the checkpoint, each file, the skipped, the total.")
@pass_invocation
@one_line_errors
def evaluate(inv: Invocation, paths: tuple[str, ...], data_dir: Path, cycle: Optional[int],
             max_bytes: Optional[int], as_json: bool) -> None:
    """Bits per byte, bits per token and perplexity of the model `cllm generate` uses (the
    latest checkpoint, or --cycle N's; its EMA weights when it has them) on text files.

    Folders are walked as `cllm crawl` walks them (default excludes, .gitignore) and files
    decoded as it decodes them; binary, empty and undecodable files are skipped with the
    reason. Each file is scored apart: its tokens and end-of-document in windows of the
    model's context, every token predicted once, the loss the trainer's validation computes.
    bits/byte = nats / ln 2 / bytes of UTF-8 text; perplexity = exp(nats / tokens).

    Example: cllm eval README.md docs/ --data-dir ./cllm-data --max-bytes 100000
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    from agent.generation.perplexity import Score, input_files, score_files

    items = input_files(paths)              # a missing path fails before the model loads
    ckpt = _checkpoint(inv, data_dir, cycle)
    console = Console(stderr=True)
    files, skipped = [], []
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} windows"), console=console,
                  transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("scoring", total=None)

        def progress(path: str, done: int, windows: int) -> None:
            bar.update(task, description=f"scoring {path}", completed=done, total=windows)

        for r in score_files(ckpt.model, ckpt.tokenizer, items, max_bytes, progress):
            if r.score is None:
                skipped.append({"path": r.path, "reason": r.reason})
            else:
                files.append({"path": r.path, **r.score.fields()})
    if not files:
        why = (f"{len(skipped)} file{'s' * (len(skipped) > 1)} skipped; {skipped[0]['path']}: "
               f"{skipped[0]['reason']}" if skipped else "no files")
        raise ConfigError(f"no text to score in {', '.join(paths)} ({why})",
                          "give text files, or folders holding some")
    total = sum((Score(f["bytes"], f["tokens"], f["nats"]) for f in files), Score(0, 0, 0.0))
    checkpoint = {"path": str(ckpt.ref.path), "sha256": ckpt.ref.sha256, "cycle": ckpt.cycle,
                  "step": ckpt.step, "ema": ckpt.state.ema is not None,
                  "context": ckpt.model.config.context}
    if as_json:
        echo_json({"checkpoint": checkpoint, "files": files, "skipped": skipped,
                   "total": {"files": len(files), **total.fields()}})
        return
    rows = files + [{"path": s["path"], "skipped": s["reason"]} for s in skipped]
    rows.append({"path": f"total ({len(files)} files)", **total.fields()})
    emit_table(rows, False, COLUMNS,
               f"{Path(checkpoint['path']).name}: cycle {ckpt.cycle}, step {ckpt.step}, "
               f"{'EMA' if checkpoint['ema'] else 'raw'} weights, context {checkpoint['context']}")
