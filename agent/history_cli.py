"""`cllm agent` (the daemon), `cllm status`, and the `cllm history` subcommands cycles, vocab,
checkpoints and forgetting (the `history` group and `history documents` live in
agent/ingest_cli.py; `register(main)` extends that group, or makes one if it is missing).

Thin commands: the work is in agent/daemon.py, agent/continuous_trainer.py and the store.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import click

from agent.clikit import (CONTEXT_SETTINGS, data_dir_option, emit_table, existing_store,
                          friendly_errors, jsonable)
from engine.errors import CllmError

json_opt = click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of objects).")
plot_opt = click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help="Also write a plot to this PNG file.")


def _plot(path: Path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str,
          title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if series:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    click.echo(f"plot written to {path}", err=True)


# --- history ----------------------------------------------------------------------------------

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
                     "vocab_before": c.vocab_size_before, "vocab_after": c.vocab_size_after,
                     "replay_document_ids": (c.schedule or {}).get("replay_document_ids", []),
                     "checkpoint_path": ck.path if ck else None,
                     "checkpoint_sha256": ck.sha256 if ck else None, "error": c.error})
    return rows


@click.command("cycles", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@json_opt
@plot_opt
@friendly_errors
def history_cycles(data_dir, as_json, plot):
    """Training cycles: documents, tokens, losses, validation, forgetting, checkpoint.

    Example: cllm history cycles --data-dir ./cllm-data --json --plot loss.png
    """
    store = existing_store(data_dir)
    try:
        with store.session(read_only=True) as s:
            rows = cycle_rows(s)
    finally:
        store.close()
    emit_table(rows, as_json, ["id", "status", "trigger", "documents", "replayed", "tokens",
                               "steps", "loss", "val_loss", "forgetting_mean", "checkpoint_path"],
               f"{len(rows)} cycles")
    if plot:
        done = [r for r in rows if r["status"] == "completed"]
        _plot(plot, {"train loss": ([r["id"] for r in done], [r["loss"] for r in done]),
                     "validation loss": ([r["id"] for r in done if r["val_loss"] is not None],
                                         [r["val_loss"] for r in done if r["val_loss"] is not None])},
              "cycle", "loss", "loss per cycle")


@click.command("vocab", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--cycle", "cycle_id", type=int, default=None, help="Only this cycle's delta.")
@json_opt
@plot_opt
@friendly_errors
def history_vocab(data_dir, cycle_id, as_json, plot):
    """Learned vocabulary: each token with the cycle and document where it first appeared.

    Example: cllm history vocab --data-dir ./cllm-data --cycle 2 --json
    """
    from store.queries import list_documents, load_vocab, vocab_delta

    store = existing_store(data_dir)
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


@click.command("checkpoints", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--verify", is_flag=True, help="Hash every checkpoint file against its row.")
@json_opt
@friendly_errors
def history_checkpoints(data_dir, verify, as_json):
    """Checkpoints recorded in the store: path, SHA-256, step, vocabulary, latest.

    Example: cllm history checkpoints --data-dir ./cllm-data --verify
    """
    from engine.checkpoint import file_sha256
    from store.queries import list_checkpoints

    store = existing_store(data_dir)
    try:
        with store.session(read_only=True) as s:
            rows = [{"id": c.id, "cycle_id": c.cycle_id, "path": c.path, "sha256": c.sha256,
                     "step": c.step, "vocab_size": c.vocab_size, "size_bytes": c.size_bytes,
                     "latest": c.is_latest, "created": c.created}
                    for c in list_checkpoints(s)]
    finally:
        store.close()
    for r in rows:
        r["exists"] = Path(r["path"]).exists()
        if verify:
            r["ok"] = r["exists"] and file_sha256(r["path"]) == r["sha256"]
    emit_table(rows, as_json, ["id", "cycle_id", "step", "vocab_size", "latest", "exists"]
               + (["ok"] if verify else []) + ["path"], f"{len(rows)} checkpoints")


@click.command("forgetting", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--source", default=None, help="Only this source.")
@json_opt
@plot_opt
@friendly_errors
def history_forgetting(data_dir, source, as_json, plot):
    """Validation loss per source after each cycle, and forgetting (loss now minus loss right
    after that source was last learned).

    Example: cllm history forgetting --data-dir ./cllm-data --plot forgetting.png
    """
    from store.queries import forgetting_by_source

    fields = ("cycle_id", "source", "val_loss", "baseline_loss", "forgetting")
    store = existing_store(data_dir)
    try:
        with store.session(read_only=True) as s:
            rows = [{k: e[k] for k in fields}
                    for e in forgetting_by_source(s, source=source, by_cycle=True)]
    finally:
        store.close()
    emit_table(rows, as_json, list(fields), f"{len(rows)} evaluations")
    if plot:
        series: dict[str, tuple[list, list]] = {}
        for r in rows:
            xs, ys = series.setdefault(r["source"], ([], []))
            xs.append(r["cycle_id"])
            ys.append(r["val_loss"])
        _plot(plot, series, "cycle", "validation loss", "validation loss per source")


HISTORY_COMMANDS = (history_cycles, history_vocab, history_checkpoints, history_forgetting)


# --- status -----------------------------------------------------------------------------------

@click.command("status", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@json_opt
@friendly_errors
def status(data_dir, as_json):
    """What the agent of a data directory is doing: running or not, the current cycle and
    its progress, pending documents, the last checkpoint.

    Example: cllm status --data-dir ./cllm-data
    """
    from agent.daemon import holder_pid
    from store.documents import pending_summary
    from store.queries import (count_cycles, document_counts, latest_checkpoint,
                               latest_step_metric, list_cycles)

    store = existing_store(data_dir)
    try:
        with store.session(read_only=True) as s:
            running = next(iter(list_cycles(s, status="running", limit=1)), None)
            current = None
            if running is not None:
                last = latest_step_metric(s, running.id)
                current = {"id": running.id, "trigger": running.trigger,
                           "started": running.started, "documents": running.docs_new,
                           "step": last.step if last else 0,
                           "steps": (running.schedule or {}).get("steps"),
                           "loss": last.loss if last else None}
            queue = pending_summary(s)
            pending, pending_bytes = queue["documents"], queue["bytes"]
            counts: dict[str, int] = {}
            for c in document_counts(s):
                counts[c["status"]] = counts.get(c["status"], 0) + c["documents"]
            counts = dict(sorted(counts.items()))
            ck = latest_checkpoint(s)
            last_ckpt = None if ck is None else {"path": ck.path, "sha256": ck.sha256,
                                                  "step": ck.step, "cycle_id": ck.cycle_id,
                                                  "vocab_size": ck.vocab_size,
                                                  "created": ck.created}
            completed = count_cycles(s, status="completed")
    finally:
        store.close()
    pid = holder_pid(data_dir)
    if current is not None:
        current["stale"] = pid is None  # left running by an agent that died; recovered on start
    out = {"agent_running": pid is not None, "pid": pid, "current_cycle": current,
           "pending_documents": pending, "pending_bytes": pending_bytes or 0,
           "documents": counts, "cycles_completed": completed, "last_checkpoint": last_ckpt}
    if as_json:
        click.echo(json.dumps(out, indent=2, default=jsonable))
        return
    click.echo(f"agent: {'running, pid ' + str(pid) if pid else 'not running'} ({data_dir})")
    if current and current["stale"]:
        click.echo(f"cycle {current['id']} was interrupted at step {current['step']} (the agent "
                   "died); its documents are still pending and the next agent start recovers it")
    elif current:
        click.echo(f"cycle {current['id']} ({current['trigger']}): step {current['step']}/"
                   f"{current['steps'] or '?'}, loss {current['loss'] or float('nan'):.3f}, "
                   f"{current['documents']} documents")
    else:
        click.echo("no cycle running")
    click.echo(f"pending: {pending} documents ({pending_bytes or 0} bytes); "
               + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    click.echo(f"cycles completed: {completed}")
    if last_ckpt:
        click.echo(f"last checkpoint: {last_ckpt['path']} (cycle {last_ckpt['cycle_id']}, step "
                   f"{last_ckpt['step']}, vocabulary {last_ckpt['vocab_size']}, sha256 "
                   f"{last_ckpt['sha256'][:16]}...)")
    else:
        click.echo("last checkpoint: none")


# --- the daemon -------------------------------------------------------------------------------

@click.command("agent", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--watch", multiple=True, metavar="DIR", help="Folder to watch (repeatable).")
@click.option("--crawl", multiple=True, metavar="TARGET",
              help="Folder, file or http(s) URL to ingest at start (repeatable).")
@click.option("--preset", type=click.Choice(["tiny", "small", "base"]), default=None,
              help="Model size for a new data directory [small].")
@click.option("--workers", type=int, default=None, help="Worker spheres [cores - 1].")
@click.option("--min-cycle-tokens", type=int, default=None,
              help="Start a cycle when this many new tokens are pending [2000].")
@click.option("--max-wait", type=float, default=None,
              help="... or when the oldest pending document waited this many seconds [300].")
@click.option("--quiet-period", type=float, default=None,
              help="Seconds without events before a changed file is read [1].")
@click.option("--include", multiple=True, metavar="PATTERN",
              help="Only files matching this gitignore-style pattern (repeatable) [all].")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Also skip files matching this pattern (repeatable); VCS, build, temp and "
                   "swap files are always skipped.")
@click.option("--polling/--no-polling", default=None,
              help="Poll folders instead of inotify (network filesystems) [no].")
@click.option("--follow-symlinks/--no-follow-symlinks", default=None,
              help="Follow symbolic links in watched and crawled folders (loops detected) [no].")
@click.option("--fallback-encoding", default=None, metavar="CODEC",
              help="Decode non-UTF-8 text with this codec, e.g. cp1252 [refuse it].")
@click.option("--max-pages", type=int, default=None, help="Pages per crawled site [100].")
@click.option("--max-depth", type=int, default=None, help="Link depth per crawled site [2].")
@click.option("--replay-fraction", type=float, default=None,
              help="Share of training sequences replayed from earlier documents [0.25].")
@click.option("--cycle-steps", type=int, default=None,
              help="Steps per cycle [from the new tokens, 20..500].")
@click.option("--batch-size", type=int, default=None, help="Sequences per step [8].")
@click.option("--lr", type=float, default=None, help="Peak learning rate, re-warmed per cycle [2e-3].")
@click.option("--max-new-tokens", type=int, default=None,
              help="Vocabulary tokens learned per cycle at most [500].")
@click.option("--crystalline-weight", type=float, default=None,
              help="Weight of the crystalline prior in the loss [0.0].")
@click.option("--init", type=click.Choice(["normal", "lattice"]), default=None,
              help="Embedding init of a new model [normal].")
@click.option("--allow-private-hosts/--no-allow-private-hosts", default=None,
              help="Let the crawler reach private and loopback addresses.")
@click.option("--max-cycles", type=click.IntRange(min=1), default=None,
              help="Stop after this many completed cycles [run until stopped].")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML settings file [$CLLM_CONFIG, else DATA_DIR/cllm.toml].")
@friendly_errors
def agent(data_dir, config, max_cycles, **flags):
    """Run the agent: watch folders, crawl targets, train in cycles; stop with Ctrl-C.

    Settings come from flags, then CLLM_* environment variables, then a TOML file.
    One agent per data directory; it resumes from the latest checkpoint. With nothing to
    watch or crawl configured anywhere it runs on embedded defaults: it watches
    DATA_DIR/inbox (drop text files there) and learns the shipped sample corpus.

    Example: cllm agent --data-dir ./cllm-data --watch ~/notes --preset small
    """
    import threading

    from agent.continuous_trainer import TrainerSettings
    from agent.daemon import Agent, AgentConfig
    from agent.signals import stop_on_signals
    from agent.settings import resolve

    cfg = resolve(flags, data_dir, config)
    root = logging.getLogger()
    if root.level > logging.INFO:  # the agent reports its cycles unless told to be quieter
        logging.getLogger("agent").setLevel(logging.INFO)
    tset = TrainerSettings(preset=cfg["preset"], workers=cfg["workers"],
                           min_cycle_tokens=cfg["min_cycle_tokens"], max_wait=cfg["max_wait"],
                           replay_fraction=cfg["replay_fraction"], steps=cfg["cycle_steps"],
                           batch_size=cfg["batch_size"], lr=cfg["lr"], min_lr=cfg["lr"] / 10,
                           max_new_tokens=cfg["max_new_tokens"],
                           crystalline_weight=cfg["crystalline_weight"], init=cfg["init"])
    if not cfg["watch"] and not cfg["crawl"]:
        cfg["watch"], cfg["crawl"] = embedded_targets(Path(data_dir))
        click.echo(f"embedded defaults: watching {cfg['watch'][0]} (drop text files there)"
                   + (f" and learning the sample corpus in {Path(cfg['crawl'][0]).parent}"
                      if cfg["crawl"] else ""),
                   err=True)
    stop = threading.Event()
    a = Agent(AgentConfig(Path(data_dir), tset, tuple(cfg["watch"]), tuple(cfg["crawl"]),
                          cfg["quiet_period"], cfg["allow_private_hosts"], max_cycles,
                          include=tuple(cfg["include"]), exclude=tuple(cfg["exclude"]),
                          polling=cfg["polling"], follow_symlinks=cfg["follow_symlinks"],
                          fallback_encoding=cfg["fallback_encoding"],
                          max_pages=cfg["max_pages"], max_depth=cfg["max_depth"]),
              stop=stop)
    with stop_on_signals(stop, sigterm=True, announce=True):
        a.run()
    click.echo(f"agent stopped after {a.cycles_completed} cycles", err=True)


def embedded_targets(data_dir: Path) -> tuple[list[str], list[str]]:
    """The defaults when nothing is configured: watch DATA_DIR/inbox (created), crawl the
    shipped sample corpus's topic folders when they are installed alongside the code."""
    from agent.commands import REPO_CORPUS

    inbox = data_dir / "inbox"
    try:
        inbox.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CllmError(f"cannot create {inbox}: {e.strerror}",
                        "choose a writable --data-dir or pass --watch DIR") from None
    # one crawl target (so one source, with its own validation and forgetting) per topic
    topics = sorted(p for p in REPO_CORPUS.iterdir() if p.is_dir()) if REPO_CORPUS.is_dir() else []
    return [str(inbox)], [str(p) for p in topics]


def register(main: click.Group) -> None:
    """Add agent and status to `main`; extend its history group (or add one)."""
    main.add_command(agent)
    main.add_command(status)
    group: Optional[click.Group] = main.commands.get("history")  # type: ignore[assignment]
    if group is None:
        @click.group("history", context_settings=CONTEXT_SETTINGS)
        def group() -> None:
            """What the agent has done: cycles, vocabulary, checkpoints, forgetting.

            Example: cllm history cycles --json
            """
        main.add_command(group)
    for cmd in HISTORY_COMMANDS:
        group.add_command(cmd)

