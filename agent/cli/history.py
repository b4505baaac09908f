"""`cllm history`: what the agent has done, read from the store: cycles, documents, crawled
URLs, vocabulary, checkpoints, forgetting. Tables, --json, and loss plots to PNG.

Thin commands over the rows of agent/reports.py (shared with the server's /api/*); they open an existing store only (never create one).
"""
from __future__ import annotations

from pathlib import Path

import click

from agent import reports
from agent.cli.common import (CONTEXT_SETTINGS, data_dir_option, emit_table,
                              json_option, one_line_errors, pass_invocation, read_view)
from engine.errors import CllmError, ConfigError
from store.models import CycleStatus, DocumentStatus, UrlStatus

plot_option = click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
                           default=None, help="Also write a plot to this file (.png, .svg, .pdf, "
                                              "...; needs the [plot] extra: matplotlib).")


@click.group(context_settings=CONTEXT_SETTINGS)
def history() -> None:
    """What the agent has done: cycles, documents, vocabulary, checkpoints, forgetting.

    Example: cllm history documents --status pending --json
    """


def _matplotlib():
    try:
        import matplotlib   # the optional [plot] extra, and slow to import: only for --plot
    except ModuleNotFoundError:
        raise CllmError("--plot needs matplotlib, which is not installed",
                        "pip install 'crystalline-cllm[plot]'") from None
    matplotlib.use("Agg")
    return matplotlib


def check_plot_path(path: Path | None) -> None:
    """Refuse a plot file that cannot be written before any work: matplotlib missing, a
    suffix it cannot write, a missing or unwritable folder."""
    if path is None:
        return
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg   # [plot] extra, as above

    kinds = FigureCanvasAgg.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in kinds:
        raise ConfigError(f"--plot {path}: cannot write {'.' + suffix if suffix else 'a file without a suffix'}",
                          "end the name in one of " + ", ".join("." + k for k in sorted(kinds)))
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"--plot {path}: the folder {folder} does not exist",
                          "create it first, or write the plot elsewhere")
    existed = path.exists()
    try:                                   # the one true test of writability (root, ACLs, ...)
        with open(path, "ab"):
            pass
    except OSError as e:
        raise ConfigError(f"--plot {path}: cannot write it: {e.strerror}",
                          "write the plot to a folder you own") from None
    if not existed:
        path.unlink()


def short_names(names) -> dict[str, str]:
    """Legend labels for source names: a path by its last components, as few as keep the
    labels apart (`/home/me/corpus/statements` -> `statements`); URLs and others as they are."""
    names = list(dict.fromkeys(names))
    paths = [n for n in names if n.startswith("/")]
    out = {n: n for n in names}
    for depth in range(1, max((len(Path(p).parts) for p in paths), default=1) + 1):
        labels = {p: "/".join(Path(p).parts[-depth:]).lstrip("/") or p for p in paths}
        if len(set(labels.values())) == len(labels):
            out.update(labels)
            break
    return out


def _plot(path: Path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str,
          title: str) -> None:
    import matplotlib.pyplot as plt    # the optional [plot] extra: only when plotting

    fig = figure(series, xlabel, ylabel, title)
    try:
        fig.savefig(path)
    except OSError as e:
        raise CllmError(f"cannot write the plot {path}: {e.strerror or e}",
                        "write it to a folder you own") from None
    finally:
        plt.close(fig)
    click.echo(f"plot written to {path}", err=True)


def figure(series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str):
    """One line per series against whole-numbered x ticks (cycles)."""
    _matplotlib()
    import matplotlib.pyplot as plt    # the optional [plot] extra: only when plotting
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # cycles are whole numbers
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if series:
        ax.legend()
    fig.tight_layout()
    return fig


@history.command("cycles", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@json_option
@plot_option
@pass_invocation
@one_line_errors
def history_cycles(inv, data_dir, as_json, plot):
    """Training cycles: documents, tokens, losses, validation, forgetting, checkpoint.

    Example: cllm history cycles --data-dir ./cllm-data --json --plot loss.png
    """
    check_plot_path(plot)
    rows = read_view(inv, data_dir, reports.cycle_rows)
    emit_table(rows, as_json, ["id", "status", "trigger", "documents", "bytes_new", "bytes_replay",
                               "steps", "loss", "val_loss", "forgetting_mean", "checkpoint_path"],
               f"{len(rows)} cycles")
    if plot:
        done = [r for r in rows if r["status"] == CycleStatus.COMPLETED]
        _plot(plot, {"train loss": ([r["id"] for r in done], [r["loss"] for r in done]),
                     "validation loss": ([r["id"] for r in done if r["val_loss"] is not None],
                                         [r["val_loss"] for r in done if r["val_loss"] is not None])},
              "cycle", "loss", "loss per cycle")


@history.command("documents", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--status", type=click.Choice([s.value for s in DocumentStatus]),
              default=None, help="Only documents with this status.")
@click.option("--source", default=None, help="Only documents from this source.")
@click.option("--cycle", "cycle_id", type=int, default=None, help="Only documents trained by this cycle.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows.")
@json_option
@pass_invocation
@one_line_errors
def history_documents(inv, data_dir, status, source, cycle_id, limit, as_json):
    """List documents: uri, status, sha256, cycle and the reason for refusals.

    Example: cllm history documents --data-dir ./cllm-data --status skipped --json
    """
    rows = read_view(inv, data_dir, reports.document_rows, status=status, source=source,
                     cycle_id=cycle_id, limit=limit)
    emit_table(rows, as_json, ["id", "status", "passes", "uri", "sha256", "cycle_id", "reason"],
               f"{len(rows)} documents")


@history.command("urls", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--status", type=click.Choice([s.value for s in UrlStatus]), default=None,
              help="Only URLs with this status.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows.")
@json_option
@pass_invocation
@one_line_errors
def history_urls(inv, data_dir, status, limit, as_json):
    """URLs the crawler handled, with the reason for every refusal (robots.txt, private
    address, size, type, HTTP errors); a restart does not fetch them again.

    Example: cllm history urls --data-dir ./cllm-data --status skipped
    """
    rows = read_view(inv, data_dir, reports.url_rows, status=status, limit=limit)
    emit_table(rows, as_json, ["id", "status", "http_status", "url", "reason", "document_id"],
               f"{len(rows)} URLs")
@history.command("vocab", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--cycle", "cycle_id", type=int, default=None, help="Only this cycle's delta.")
@json_option
@plot_option
@pass_invocation
@one_line_errors
def history_vocab(inv, data_dir, cycle_id, as_json, plot):
    """Learned vocabulary: each token with the cycle and document where it first appeared.

    Example: cllm history vocab --data-dir ./cllm-data --cycle 2 --json
    """
    check_plot_path(plot)
    rows, base = read_view(inv, data_dir, reports.vocab_rows, cycle_id)
    emit_table(rows, as_json, ["token_id", "token", "cycle_id", "document"],
               f"{len(rows)} learned tokens")
    if plot:
        size, xs, ys = (base or -1) + 1, [], []
        by_cycle: dict[int, int] = {}
        for r in rows:
            by_cycle[r["cycle_id"]] = by_cycle.get(r["cycle_id"], 0) + 1
        for c in sorted(by_cycle):
            size += by_cycle[c]
            xs.append(c)
            ys.append(size)
        _plot(plot, {"vocabulary size": (xs, ys)}, "cycle", "tokens", "vocabulary growth")


@history.command("checkpoints", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--verify", is_flag=True, help="Hash every checkpoint file against its row.")
@json_option
@pass_invocation
@one_line_errors
def history_checkpoints(inv, data_dir, verify, as_json):
    """Checkpoints recorded in the store: path, SHA-256, step, vocabulary, latest.

    Example: cllm history checkpoints --data-dir ./cllm-data --verify
    """
    rows = read_view(inv, data_dir, reports.checkpoint_rows, verify=verify)
    emit_table(rows, as_json, ["id", "cycle_id", "step", "vocab_size", "latest", "exists", "pruned"]
               + (["ok"] if verify else []) + ["path"], f"{len(rows)} checkpoints")


@history.command("forgetting", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--source", default=None, help="Only this source.")
@json_option
@plot_option
@pass_invocation
@one_line_errors
def history_forgetting(inv, data_dir, source, as_json, plot):
    """Validation loss per source after each cycle, and forgetting (loss now minus loss right
    after that source was last learned).

    Example: cllm history forgetting --data-dir ./cllm-data --plot forgetting.png
    """
    check_plot_path(plot)
    rows = read_view(inv, data_dir, reports.forgetting_rows, source=source)
    emit_table(rows, as_json, list(reports.FORGETTING_FIELDS), f"{len(rows)} evaluations")
    if plot:
        series: dict[str, tuple[list, list]] = {}
        label = short_names(r["source"] for r in rows)
        for r in rows:
            xs, ys = series.setdefault(label[r["source"]], ([], []))
            xs.append(r["cycle_id"])
            ys.append(r["val_loss"])
        _plot(plot, series, "cycle", "validation loss", "validation loss per source")
