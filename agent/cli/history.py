"""`cllm history`: what the agent has done, read from the store: cycles, documents, crawled
URLs, vocabulary, checkpoints, forgetting. Tables, --json, and loss plots to PNG.

Thin commands over store.queries; they open an existing store only (never create one).
"""
from __future__ import annotations

from pathlib import Path

import click

from agent.cli.common import (CONTEXT_SETTINGS, data_dir_option, emit_table, existing_store,
                              json_option, jsonable, one_line_errors, pass_invocation)
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
        import matplotlib
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
    from matplotlib.backends.backend_agg import FigureCanvasAgg

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
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt
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


def cycle_rows(session) -> list[dict]:
    from store.queries import list_checkpoints, list_cycles

    ckpts = {c.cycle_id: c for c in list_checkpoints(session)}  # a cycle's last checkpoint
    rows = []
    for c in list_cycles(session):
        ck = ckpts.get(c.id)
        rows.append({"id": c.id, "status": c.status, "trigger": c.trigger, "started": c.started,
                     "finished": c.finished, "documents": c.docs_new,
                     "replayed": c.docs_replayed, "tokens": c.tokens, "steps": c.steps,
                     "loss_start": c.loss_start, "loss": c.loss_end, "val_loss": c.val_loss,
                     "forgetting_mean": c.forgetting_mean, "forgetting_max": c.forgetting_max,
                     "tokens_per_s": c.tokens_per_s, "workers": c.workers,
                     "bytes_new": c.bytes_new, "bytes_replay": c.bytes_replay,
                     "ended_by": (c.schedule or {}).get("ended_by"),
                     "vocab_before": c.vocab_size_before, "vocab_after": c.vocab_size_after,
                     "replay_document_ids": (c.schedule or {}).get("replay_document_ids", []),
                     "checkpoint_path": ck.path if ck else None,
                     "checkpoint_sha256": ck.sha256 if ck else None, "error": c.error})
    return rows


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
    store = existing_store(data_dir, inv.database_url)
    try:
        with store.session(read_only=True) as s:
            rows = cycle_rows(s)
    finally:
        store.close()
    emit_table(rows, as_json, ["id", "status", "trigger", "documents", "bytes_new", "bytes_replay",
                               "steps", "loss", "val_loss", "forgetting_mean", "checkpoint_path"],
               f"{len(rows)} cycles")
    if plot:
        done = [r for r in rows if r["status"] == CycleStatus.COMPLETED]
        _plot(plot, {"train loss": ([r["id"] for r in done], [r["loss"] for r in done]),
                     "validation loss": ([r["id"] for r in done if r["val_loss"] is not None],
                                         [r["val_loss"] for r in done if r["val_loss"] is not None])},
              "cycle", "loss", "loss per cycle")


DOCUMENT_FIELDS = ("id", "uri", "source", "status", "sha256", "size_bytes", "n_tokens",
                   "trainable_bytes", "trained_bytes", "encoding",
                   "reason", "cycle_id", "target_id", "first_seen", "updated")


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
    from store import queries

    store = existing_store(data_dir, inv.database_url)
    try:
        with store.session(read_only=True) as s:
            docs = queries.list_documents(s, status=status, source=source, cycle_id=cycle_id, limit=limit)
            rows = [{f: jsonable(getattr(d, f)) for f in DOCUMENT_FIELDS} for d in docs]
    finally:
        store.close()
    for r in rows:     # the ledger: passes over the training text, summed over cycles
        r["passes"] = (round(r["trained_bytes"] / r["trainable_bytes"], 3)
                       if r["trainable_bytes"] else 0.0)
    emit_table(rows, as_json, ["id", "status", "passes", "uri", "sha256", "cycle_id", "reason"],
               f"{len(rows)} documents")


URL_FIELDS = ("id", "url", "status", "http_status", "reason", "document_id", "fetched_at")


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
    from store.urls import list_urls

    store = existing_store(data_dir, inv.database_url)
    try:
        with store.session(read_only=True) as s:
            rows = [{f: jsonable(getattr(u, f)) for f in URL_FIELDS}
                    for u in list_urls(s, status=status or None, limit=limit)]
    finally:
        store.close()
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
    from store.queries import list_documents, load_vocab, vocab_delta

    store = existing_store(data_dir, inv.database_url)
    try:
        with store.session(read_only=True) as s:
            vocab = load_vocab(s)
            learned = (vocab_delta(s, cycle_id) if cycle_id is not None
                       else [v for v in vocab if v.cycle_id is not None])
            uris = {d.id: d.uri for d in list_documents(
                s, ids={v.document_id for v in learned if v.document_id is not None})}
            rows = [{"token_id": v.token_id,
                     "token": v.token_bytes.decode("utf-8", "backslashreplace"),
                     "cycle_id": v.cycle_id, "document_id": v.document_id,
                     "document": uris.get(v.document_id)} for v in learned]
            base = max((v.token_id for v in vocab if v.cycle_id is None), default=None)
    finally:
        store.close()
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
    from engine.checkpoint import file_sha256
    from store.queries import list_checkpoints

    store = existing_store(data_dir, inv.database_url)
    try:
        with store.session(read_only=True) as s:
            rows = [{"id": c.id, "cycle_id": c.cycle_id, "path": c.path, "sha256": c.sha256,
                     "step": c.step, "vocab_size": c.vocab_size, "size_bytes": c.size_bytes,
                     "latest": c.is_latest, "created": c.created, "pruned": c.pruned}
                    for c in list_checkpoints(s)]
    finally:
        store.close()
    for r in rows:
        r["exists"] = Path(r["path"]).exists()     # False for a pruned one, which says so
        if verify:
            r["ok"] = r["exists"] and file_sha256(r["path"]) == r["sha256"]
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
    from store.queries import forgetting_by_source

    fields = ("cycle_id", "source", "val_loss", "baseline_loss", "forgetting")
    store = existing_store(data_dir, inv.database_url)
    try:
        with store.session(read_only=True) as s:
            rows = [{k: e[k] for k in fields}
                    for e in forgetting_by_source(s, source=source, by_cycle=True)]
    finally:
        store.close()
    emit_table(rows, as_json, list(fields), f"{len(rows)} evaluations")
    if plot:
        series: dict[str, tuple[list, list]] = {}
        label = short_names(r["source"] for r in rows)
        for r in rows:
            xs, ys = series.setdefault(label[r["source"]], ([], []))
            xs.append(r["cycle_id"])
            ys.append(r["val_loss"])
        _plot(plot, series, "cycle", "validation loss", "validation loss per source")
