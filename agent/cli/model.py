"""`cllm train`, `cllm generate`, `cllm neighbours` and `cllm bench`: the model from the
command line, as thin commands over agent.inputs.corpus, the continuous trainer and the engine.

`train`'s settings come from agent/settings.py and agent/resolve.py (flags, CLLM_*, TOML, as
every command).
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from agent.cli.common import (CONTEXT_SETTINGS, EXIT_INTERRUPTED, Invocation, data_dir_option,
                              echo_json, existing_store, one_line_errors, pass_invocation,
                              warn_if_preset_ignored)
from agent.generation.checkpoint import DECODE_WEIGHTS, load_serving_checkpoint
from agent.generation.stream import Sampling, TextStream
from agent.resolve import options, resolve
from agent.settings import TrainerSettings, build
from agent.signals import stop_on_signals
from engine import PRESETS
from engine.config import parse_arch
from engine.decode import KINDS
from engine.errors import CllmError, ConfigError

@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@data_dir_option
@options("train")
@click.option("--fresh", is_flag=True,
              help="Start a new model; earlier cycles are rolled back (their documents pending).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_invocation
@one_line_errors
def train(inv: Invocation, paths: tuple[str, ...], data_dir: Path, fresh: bool, as_json: bool,
          **flags) -> None:
    """Train once on text files (default: the shipped sample corpus) and checkpoint.

    PATHs are read as `cllm crawl PATH` reads them (the same files, the same source names:
    each folder as given), and the run is recorded as a cycle. Ctrl-C stops at the next
    step and saves what was trained (a checkpoint and an interrupted, committed cycle).

    Example: cllm train ~/notes --preset small --steps 300
    """
    from agent.continuous_trainer import CycleInterrupted, record_documents
    from agent.daemon import open_training
    from agent.inputs.corpus import corpus_topics, read_docs
    from agent.training.model_state import new_model_state

    values = resolve(flags, data_dir, command="train")
    if not fresh:
        warn_if_preset_ignored(values, data_dir, fresh_flag="--fresh")
    steps, preset, seed, init = values["steps"], values["preset"], values["seed"], values["init"]
    if not paths:
        paths = tuple(map(str, corpus_topics()))   # one source per topic, as the agent's
        if not paths:
            raise CllmError("no PATH given and the sample corpus is not installed",
                            "give folders of text: cllm train PATH...")
    docs = read_docs(list(paths), own_dirs=(data_dir,))    # never its own files
    # a single cycle, no replay
    settings = build(TrainerSettings, values, replay_fraction=0.0)
    console = Console(stderr=True) if as_json else None   # keep stdout clean for JSON
    # one run is one cycle in the store, opened as the agent opens it: the data directory's
    # lock and the store's trainer lease (no agent meanwhile, on this directory or database)
    stop = threading.Event()     # Ctrl-C, SIGTERM, SIGHUP: stop at the next step, save that
    with open_training(data_dir, settings, database_url=inv.database_url,
                       stop=stop) as (store, trainer):
        if fresh:
            trainer.start_fresh(new_model_state(preset, seed=seed, init=init,
                                                arch=settings.arch_options()))
        else:
            trainer.load_latest()
            if trainer.state.step == 0 and init:
                trainer.state = new_model_state(preset, seed=seed, init=init,
                                                arch=settings.arch_options())
        state = trainer.state
        with Progress(TextColumn("[bold]training[/]"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} steps"),
                      TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(),
                      console=console) as bar:
            task = bar.add_task("train", total=steps, loss=float("nan"))
            trainer.progress = lambda c, i, n, loss: bar.update(task, completed=i, loss=loss)
            try:
                with stop_on_signals(stop, sigterm=True, second_interrupt_aborts=True):
                    rep = trainer.run_cycle(record_documents(store, docs), "train", steps=steps)
            except CycleInterrupted:
                raise CllmError("interrupted before the first step: nothing was trained or "
                                "changed", "run it again") from None
            except KeyboardInterrupt:   # a second Ctrl-C: the cycle was marked interrupted
                raise CllmError("aborted: nothing of this run was saved",
                                "one Ctrl-C stops at the next step and saves what was "
                                "trained") from None
    if rep is None:
        raise CllmError("the documents hold no trainable text", "add text files with content")
    res, path, sha = rep.run, rep.checkpoint_path, rep.checkpoint_sha256
    interrupted = rep.ended_by == "stop"
    summary = {"cycle_id": rep.cycle_id, "checkpoint_path": str(path), "interrupted": interrupted,
               "steps_planned": steps,
               "checkpoint_sha256": sha, "steps": res.steps,
               "skipped": res.skipped, "tokens": res.tokens,
               "tokens_per_s": round(res.tokens_per_s, 1), "loss_start": res.loss_start,
               "loss_end": res.loss_end, "val_loss": res.val_loss,
               "vocab_size": len(state.tokenizer), "new_tokens": len(res.new_token_ids),
               "documents": len(docs), "model": state.model.config.to_json()}
    if as_json:
        echo_json(summary)
    else:
        if interrupted:
            click.echo(f"interrupted after {res.steps} of {steps} steps: what was trained is "
                       f"saved (cycle {rep.cycle_id}, committed, not evaluated)")
        click.echo(f"trained {res.steps} steps on {len(docs)} documents, {res.tokens} tokens at "
                   f"{res.tokens_per_s:.0f} tok/s; vocabulary {len(state.tokenizer)} "
                   f"(+{len(res.new_token_ids)})")
        click.echo(f"loss {res.loss_start:.3f} -> {res.loss_end:.3f}; validation: " + (", ".join(
            f"{k} {v:.3f}" for k, v in sorted(res.val_loss.items())) or "not evaluated"))
        click.echo(f"checkpoint {path}")
        click.echo(f"next: cllm generate --data-dir {data_dir} --prompt 'The for statement'")
    if interrupted:
        sys.exit(EXIT_INTERRUPTED)


decode_weights_option = click.option(
    "--decode-weights", "decode_weights", type=click.Choice(list(KINDS)),
    default=DECODE_WEIGHTS, show_default=True,
    help="The weights decoding reads: int8 copies (several times faster; held-out "
         "perplexity within 0.01% of float32 in docs/benchmarks.md) or float32 (exact).")


def sampling_options(fn):
    """The sampling options `cllm generate` and `cllm chat` share (their defaults are
    Sampling's: agent/generation/stream.py)."""
    for opt in reversed([
        click.option("--max-tokens", type=click.IntRange(min=0), default=Sampling.max_tokens,
                     show_default=True, help="Tokens to generate at most."),
        click.option("--max-new-tokens", "old_max_tokens", type=click.IntRange(min=0),
                     default=None, hidden=True),  # its name until 0.1 (deprecated)
        click.option("--temperature", type=click.FloatRange(min=0.0),
                     default=Sampling.temperature, show_default=True, help="0 is greedy."),
        click.option("--top-k", type=click.IntRange(min=1), default=Sampling.top_k,
                     show_default=True),
        click.option("--top-p", type=click.FloatRange(0.0, 1.0), default=Sampling.top_p,
                     help="Keep the smallest set of tokens with this much probability "
                          "(0: greedy)."),
        click.option("--seed", type=int, default=Sampling.seed),
        click.option("--stop", multiple=True,
                     help="Stop before this text (repeatable; it is not printed)."),
        click.option("--checkpoint", "cycle", type=int, default=None, metavar="N",
                     help="Use cycle N's checkpoint (default: the latest, or the running "
                          "cycle's live snapshot when the agent published one since)."),
        click.option("--committed", is_flag=True,
                     help="Use the latest committed checkpoint, never a live snapshot."),
        decode_weights_option,
    ]):
        fn = opt(fn)
    return fn


def load_for_generation(inv: Invocation, data_dir: Path, cycle,
                        weights: str = DECODE_WEIGHTS, committed: bool = False):
    """The checkpoint to generate from, through the store's record, or the running cycle's
    live snapshot unless `committed` (agent/generation/checkpoint.py)."""
    store = existing_store(data_dir, inv.database_url)
    try:
        ckpt = load_serving_checkpoint(store, data_dir, cycle, weights, committed)
    finally:
        store.close()
    if ckpt is None:
        raise CllmError(f"no checkpoint in {data_dir}", "train first: cllm train")
    return ckpt


def deprecated_max_tokens(max_tokens, old_max_tokens, command: str):
    if old_max_tokens is None:
        return max_tokens
    click.echo(f"warning: {command}'s --max-new-tokens is deprecated, it is --max-tokens now",
               err=True)
    return old_max_tokens


def sampling(max_tokens, temperature, top_k, top_p, seed, stop, extra_stops=()):
    return Sampling(max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                    top_p=top_p, seed=seed, stop=tuple(stop) + tuple(extra_stops))


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("prompt_arg", metavar="[PROMPT]", required=False)
@data_dir_option
@click.option("--prompt", default=None, help="Text to continue (or give it as PROMPT, or on "
                                             "standard input).")
@click.option("--suffix", default=None,
              help="Fill in the middle: write what goes between PROMPT and this text (a "
                   "checkpoint trained with --fim-rate above 0).")
@sampling_options
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (text, usage, checkpoint) instead of streaming.")
@pass_invocation
@one_line_errors
def generate(inv, prompt_arg, data_dir, prompt, suffix, max_tokens, old_max_tokens, temperature,
             top_k, top_p, seed, stop, cycle, committed, decode_weights, as_json):
    """Stream a continuation of PROMPT from the latest checkpoint (or --checkpoint N's), or
    from the running cycle's live snapshot when the agent published one since (-v says which;
    --committed never takes it); with --suffix, the middle between PROMPT and it.

    Example: echo "def f(" | cllm generate --data-dir ./cllm-data --seed 1
    """
    if prompt_arg is not None and prompt is not None:
        raise ConfigError("the prompt is given twice (PROMPT and --prompt)", "give one of them")
    text = prompt_arg if prompt_arg is not None else prompt
    if text is None:
        # piped text: without the final newline(s) `echo` adds
        text = "" if sys.stdin.isatty() else sys.stdin.read().rstrip("\n")
    max_tokens = deprecated_max_tokens(max_tokens, old_max_tokens, "generate")
    ckpt = load_for_generation(inv, data_dir, cycle, decode_weights, committed)
    ts = TextStream(ckpt, text, sampling(max_tokens, temperature, top_k, top_p, seed, stop),
                    suffix=suffix)
    if as_json:
        out = ts.run()
        echo_json({
            "prompt": text, **({"suffix": suffix} if suffix is not None else {}),
            "text": out, "finish_reason": ts.finish_reason,
            "usage": {"prompt_tokens": ts.prompt_tokens,
                      "completion_tokens": ts.completion_tokens,
                      "total_tokens": ts.prompt_tokens + ts.completion_tokens},
            **ckpt.describe(), "seed": seed})
        return
    click.echo(text, nl=False)
    try:
        for piece in ts:
            click.echo(piece, nl=False)
        if suffix is not None:
            click.echo(suffix, nl=False)
    except KeyboardInterrupt:        # Ctrl-C ends the stream, not with a traceback
        click.echo("")
        sys.exit(EXIT_INTERRUPTED)
    click.echo("")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--preset", "preset_name", type=click.Choice(list(PRESETS)), default="base",
              show_default=True, help="Model size to measure.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Global batch (sequences a step) [default: a new data directory's].")
@click.option("--optimizer", type=click.Choice(["adamw", "muon"]), default=None,
              help="The step's optimizer [default: a new data directory's]; PyTorch runs "
                   "the same.")
@click.option("--workers", default="1,2", show_default=True, help="Comma-separated counts.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Interleaved rounds (medians are reported).")
@click.option("--steps", type=click.IntRange(min=1), default=3, show_default=True,
              help="Training steps per measurement.")
@click.option("--arch", default=None, metavar="OPTIONS",
              help="The model's architecture options (as cllm agent --arch; gpt2 for GPT-2's "
                   "block) [default: a new data directory's]; PyTorch runs the same model.")
@click.option("--no-torch", is_flag=True, help="Skip the PyTorch peer even if it is installed.")
@click.option("--topology", is_flag=True, help="Print the sphere tree with statistics.")
@click.option("--mpi", is_flag=True,
              help="Under mpiexec: every rank against rank 0 alone, and the allreduce time.")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def bench(preset_name, batch_size, optimizer, workers, rounds, steps, arch, no_torch,
          topology, mpi, as_json):
    """Training tokens/s, scaling, CPU use for several worker counts (and PyTorch eager at the
    same thread counts when it is installed), interleaved in one run.

    Example: cllm bench --preset base --workers 1,2,16 --topology
    """
    from agent.benchmark import scaling, table_lines, topology_lines

    try:
        counts = [int(c) for c in workers.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--workers {workers!r} is not a list of numbers", "e.g. 1,2,4") from None
    if not counts or min(counts) < 1:
        raise ConfigError(f"--workers {workers!r} needs counts >= 1", "e.g. 1,2,4")
    if mpi:
        from agent.benchmark import bench_recipe, mpi_scaling, mpi_table_lines
        from engine.mpi import world

        if world() is None:
            raise ConfigError("--mpi measures an MPI job, and this is a single process",
                              "mpiexec -n 2 cllm bench --mpi --workers 1")
        res = mpi_scaling(preset_name, bench_recipe(batch_size)[0], counts[0], rounds, steps)
        if as_json:
            echo_json(res)
        else:
            click.echo("\n".join(mpi_table_lines(res)))
        return
    if arch is not None:
        try:
            parse_arch(arch)
        except ValueError as e:
            raise ConfigError(f"--arch: {e}", "e.g. --arch gpt2, or --arch mlp=relu2,pos=rope") \
                from None
    res = scaling(preset_name, batch_size, counts, rounds, steps, with_torch=not no_torch,
                  arch=arch, optimizer=optimizer)
    if as_json:
        if not topology:
            res["topology"] = None
        echo_json(res)
        return
    for line in table_lines(res):
        click.echo(line)
    if topology:
        click.echo("")
        for line in topology_lines(res["topology"]):
            click.echo(line)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("token", type=int)
@click.option("--vocab-size", type=int, default=None,
              help="Vocabulary to search (default: the latest checkpoint's, else 10000).")
@data_dir_option
@click.option("--json", "as_json", is_flag=True)
@pass_invocation
@one_line_errors
def neighbours(inv: Invocation, token, vocab_size, data_dir, as_json):
    """Show a token's 12 crystalline "kissing" neighbours, its Ulam point and clock position,
    each with its text in the data directory's latest vocabulary (when there is a
    checkpoint; whitespace shown as ␣).

    Example: cllm neighbours 100 --vocab-size 10000
    """
    from agent.cli.common import table_cell
    from agent.training.model_state import load_recorded_model_state
    from engine.prime_math import describe_token
    from store.db import SQLITE_FILENAME

    state = None        # the latest recorded checkpoint's model and vocabulary, if any
    if inv.database_url or (Path(data_dir) / SQLITE_FILENAME).exists():
        state, _ = load_recorded_model_state(existing_store(data_dir, inv.database_url))
    tok = state.tokenizer if state is not None else None
    if vocab_size is None:
        vocab_size = state.model.config.vocab_size if state is not None else 10000
    if not 0 <= token < vocab_size:
        raise ConfigError(f"token {token} is outside the vocabulary [0, {vocab_size})",
                          "pick a smaller id or a larger --vocab-size")

    def text(t: int):
        if tok is None or t >= len(tok):
            return None
        return tok.token_bytes(t).decode("utf-8", "backslashreplace")

    d = describe_token(token, vocab_size)
    d["text"] = text(token)
    for n in d["neighbours"]:
        n["text"] = text(n["token"])
    if as_json:
        echo_json(d)
        return
    c = d["clock"]
    shown = f" {table_cell('token', d['text'])!r}" if d["text"] is not None else ""
    click.echo(f"token {token}{shown}: Ulam point {tuple(d['ulam'])}, clock ring {c['ring']} "
               f"position {c['pos']}/{c['ring_size']}, symmetry group {d['symmetry_group']}")
    click.echo(f"{'neighbour':>10} {'similarity':>11} {'prior q':>8}  text")
    for n in d["neighbours"]:
        click.echo(f"{n['token']:>10} {n['similarity']:>11.4f} {n['prior']:>8.4f}  "
                   + (table_cell("token", n["text"]) if n["text"] is not None else ""))
