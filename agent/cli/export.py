"""`cllm models` (the checkpoints a data directory can serve or export) and `cllm export` (one
of them as a GGUF file for llama.cpp, Ollama, LM Studio, llama.vim, Tabby:
agent/generation/export.py; or, with --format hf, as a Hugging Face GPT-2 folder for
transformers: agent/generation/hf_export.py). Both name a checkpoint by the cycle that
committed it, as `cllm serve --checkpoint N` and `cllm generate --checkpoint N` do.
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
    the cycle's held-out loss (nats/token), architecture, the llama.cpp architecture
    `cllm export` writes it as (empty: it cannot be exported),
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
@click.option("--format", "fmt", type=click.Choice(["gguf", "hf"]), default="gguf",
              show_default=True,
              help="gguf: one file for llama.cpp and Ollama; hf: a Hugging Face folder "
                   "(config.json, model.safetensors, tokenizer.json) for transformers.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="The GGUF file, or with --format hf the folder, to write (default: "
                   "./<data dir>-cycle-<N>-<dtype>.gguf, or ./<data dir>-cycle-<N>-<dtype>-hf).")
@click.option("--dtype", type=click.Choice(["f32", "f16", "q8_0"]), default="f32",
              show_default=True,
              help="How the matrices are stored (in GGUF, norms and biases stay f32). f32 is "
                   "exact; f16 and q8_0 (GGUF only) are smaller, judged by perplexity in "
                   "docs/benchmarks.md.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@pass_invocation
@one_line_errors
def export(inv: Invocation, data_dir: Path, cycle: Optional[int], fmt: str,
           output: Optional[Path], dtype: str, as_json: bool) -> None:
    """Write a checkpoint (its EMA weights, as `cllm generate` serves them) and its tokenizer
    as a GGUF file that llama.cpp and Ollama run, or (--format hf) as a Hugging Face folder
    that transformers loads with our tokenization exactly. Architectures GPT-2 does not
    compute (the recipe's relu2, rope, qk_norm and softcap options) are refused with the
    reason. An existing --format hf folder is replaced only if it is an earlier export.

    Example: cllm export --data-dir ./cllm-data -o code.gguf && llama-cli -m code.gguf -p "def "

    Example: cllm export --data-dir ./cllm-data --format hf -o code-hf
    """
    from agent.training.model_state import load_recorded_model_state

    if fmt == "hf" and dtype == "q8_0":
        raise ConfigError("--dtype q8_0 is llama.cpp's quantisation; a Hugging Face folder "
                          "holds f32 or f16 weights", "use --dtype f16, or --format gguf for q8_0")
    if fmt == "gguf" and output is not None and output.is_dir():
        raise ConfigError(f"-o {output} is a folder; --format gguf writes one file",
                          "name a file (code.gguf), or pass --format hf to write a folder")
    store = existing_store(data_dir, inv.database_url)
    try:
        state, row = load_recorded_model_state(store, cycle)
    finally:
        store.close()
    if state is None:
        raise ConfigError(f"no checkpoint of {data_dir} could be loaded",
                          "train one first (cllm train PATH), or see cllm models")
    model = state.serving_model()
    stem = f"{Path(data_dir).resolve().name}-cycle-{row.cycle_id}"
    meta = dict(name=f"cllm-{stem}",
                description=f"Crystalline CLLM, cycle {row.cycle_id}, step {state.step}")
    if fmt == "hf":
        from agent.generation.hf_export import export_hf
        info = export_hf(model, state.tokenizer, output or Path(f"{stem}-{dtype}-hf"),
                         dtype=dtype, **meta)
    else:
        from agent.generation.export import export_gguf
        info = export_gguf(model, state.tokenizer, output or Path(f"{stem}-{dtype}.gguf"),
                           dtype=dtype, **meta)
    info.update(cycle=row.cycle_id, step=state.step, checkpoint_sha256=row.sha256)
    if as_json:
        echo_json(info)
        return
    click.echo(f"wrote {info['path']}: cycle {row.cycle_id}, {info['dtype']}, "
               f"{info['vocab_size']} tokens, context {info['context']}, {info['bytes']:,} bytes")
    if fmt == "hf":
        click.echo("load it: transformers.AutoModelForCausalLM.from_pretrained"
                   f"({str(Path(info['path']).resolve())!r}) and AutoTokenizer likewise",
                   err=True)
        return
    click.echo(f"run it: llama-cli -m {info['path']} -c {info['context']}   or, with Ollama: "
               f"printf 'FROM {Path(info['path']).resolve()}\\n' > Modelfile && "
               "ollama create cllm -f Modelfile", err=True)
