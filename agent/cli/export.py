"""`cllm models` (the checkpoints a data directory can serve or export) and `cllm export` (one
of them as a GGUF file for llama.cpp, Ollama, LM Studio, llama.vim, Tabby:
agent/generation/export.py). Both name a checkpoint by the cycle that committed it, as
`cllm serve --checkpoint N` and `cllm generate --checkpoint N` do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from agent import reports
from agent.cli.common import (CONTEXT_SETTINGS, Invocation, data_dir_option, echo_json,
                              emit_table, existing_store, one_line_errors, pass_invocation,
                              read_view)
from engine.errors import ConfigError


@click.command("models", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@pass_invocation
@one_line_errors
def models(inv: Invocation, data_dir: Path, as_json: bool) -> None:
    """The checkpoints of a data directory, newest first: the cycle that committed each (what
    --checkpoint N names in serve, generate, chat and export), step, vocabulary, file size,
    the cycle's held-out loss (nats/token), architecture, whether `cllm export` takes it,
    and whether retention pruned its file.

    Example: cllm models --data-dir ./cllm-data
    """
    rows = read_view(inv, data_dir, reports.model_rows)
    emit_table(rows, as_json, ["cycle_id", "step", "vocab_size", "size_bytes", "val_loss",
                               "arch", "exportable", "latest", "pruned"],
               f"{len(rows)} checkpoints ({sum(r['pruned'] is None for r in rows)} with files)")


@click.command("export", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--checkpoint", "--cycle", "cycle", type=int, default=None, metavar="N",
              help="Export cycle N's checkpoint (default: the latest committed one; "
                   "`cllm models` lists them).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The GGUF file to write (default: ./<data dir>-cycle-<N>-<dtype>.gguf).")
@click.option("--dtype", type=click.Choice(["f32", "f16", "q8_0"]), default="f32",
              show_default=True,
              help="How the matrices are stored (norms and biases stay f32). f32 is exact; "
                   "f16 and q8_0 are smaller, judged by perplexity in docs/benchmarks.md.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@pass_invocation
@one_line_errors
def export(inv: Invocation, data_dir: Path, cycle: Optional[int], output: Optional[Path],
           dtype: str, as_json: bool) -> None:
    """Write a checkpoint (its EMA weights, as `cllm generate` serves them) and its tokenizer
    as a GGUF file that llama.cpp and Ollama run. Architectures llama.cpp does not compute
    (the recipe's relu2, rope, qk_norm and softcap options) are refused with the reason.

    Example: cllm export --data-dir ./cllm-data -o code.gguf && llama-cli -m code.gguf -p "def "
    """
    from agent.generation.export import export_gguf
    from agent.training.model_state import load_recorded_model_state

    store = existing_store(data_dir, inv.database_url)
    try:
        state, row = load_recorded_model_state(store, cycle)
    finally:
        store.close()
    if state is None:
        raise ConfigError(f"no checkpoint of {data_dir} could be loaded",
                          "train one first (cllm train PATH), or see cllm models")
    model = state.serving_model()
    out = output or Path(f"{Path(data_dir).resolve().name}-cycle-{row.cycle_id}-{dtype}.gguf")
    info = export_gguf(model, state.tokenizer, out, dtype=dtype,
                       name=f"cllm-{Path(data_dir).resolve().name}-cycle-{row.cycle_id}",
                       description=f"Crystalline CLLM, cycle {row.cycle_id}, step {state.step}")
    info.update(cycle=row.cycle_id, step=state.step, checkpoint_sha256=row.sha256)
    if as_json:
        echo_json(info)
        return
    click.echo(f"wrote {info['path']}: cycle {row.cycle_id}, {info['dtype']}, "
               f"{info['vocab_size']} tokens, context {info['context']}, {info['bytes']:,} bytes")
    click.echo(f"run it: llama-cli -m {info['path']} -c {info['context']}   or, with Ollama: "
               f"printf 'FROM {Path(info['path']).resolve()}\\n' > Modelfile && "
               "ollama create cllm -f Modelfile", err=True)
