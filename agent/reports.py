"""What the CLI's views show, as rows: one function per view, each reading the store in the
caller's session. `cllm status`, `cllm history ...` (their --json) and the server's /api/*
routes print these same rows, so a field added here appears in all of them.

Values are as the store holds them (datetimes stay datetimes: `jsonable` turns them into
ISO 8601 strings when the rows are written as JSON).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from agent.datadir import holder_pid
from agent.training.snapshot import current_snapshot
from engine.checkpoint import file_sha256
from store import controls
from store import lease as store_lease
from store.checkpoints import latest_checkpoint, list_checkpoints
from store.cycles import (count_cycles, count_step_metrics, forgetting_by_source, get_cycle,
                          latest_step_metric,
                          list_cycles, list_step_metrics)
from store.documents import count_documents, document_counts, list_documents, pending_summary
from store.frontier import count_urls, list_urls
from store.ledger import backlog_status
from store.models import CycleStatus
from store.targets import list_targets
from store.vocab import load_vocab, vocab_delta

DOCUMENT_FIELDS = ("id", "uri", "source", "status", "sha256", "size_bytes", "n_tokens",
                   "trainable_bytes", "trained_bytes", "encoding",
                   "reason", "cycle_id", "target_id", "origin", "first_seen", "updated")
URL_FIELDS = ("id", "url", "status", "http_status", "reason", "document_id", "fetched_at")
FORGETTING_FIELDS = ("cycle_id", "source", "val_loss", "baseline_loss", "forgetting")


def jsonable(v):
    """Datetimes as ISO 8601 strings, numpy scalars as numbers (for json.dumps(default=...));
    other values as they are."""
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if hasattr(v, "item") and hasattr(v, "dtype"):     # numpy scalars
        return v.item()
    return v


def cycle_rows(session) -> list[dict]:
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


def document_rows(session, status: Optional[str] = None, source: Optional[str] = None,
                  cycle_id: Optional[int] = None, limit: Optional[int] = None,
                  offset: int = 0) -> list[dict]:
    rows = [{f: jsonable(getattr(d, f)) for f in DOCUMENT_FIELDS}
            for d in list_documents(session, status=status, source=source, cycle_id=cycle_id,
                                    limit=limit, offset=offset)]
    for r in rows:     # the ledger: passes over the training text, summed over cycles
        r["passes"] = (round(r["trained_bytes"] / r["trainable_bytes"], 3)
                       if r["trainable_bytes"] else 0.0)
    return rows


def document_total(session, status: Optional[str] = None, source: Optional[str] = None,
                   cycle_id: Optional[int] = None) -> int:
    """How many rows document_rows has with these filters (all pages)."""
    return count_documents(session, status=status, source=source, cycle_id=cycle_id)


def url_rows(session, status: Optional[str] = None, limit: Optional[int] = None,
             offset: int = 0) -> list[dict]:
    return [{f: jsonable(getattr(u, f)) for f in URL_FIELDS}
            for u in list_urls(session, status=status or None, limit=limit, offset=offset)]


def url_total(session, status: Optional[str] = None) -> int:
    """How many rows url_rows has (all pages)."""
    return count_urls(session, status=status or None)


def vocab_rows(session, cycle_id: Optional[int] = None) -> tuple[list[dict], Optional[int]]:
    """(learned tokens with the cycle and document where each first appeared, the largest
    base-vocabulary id)."""
    vocab = load_vocab(session)
    learned = (vocab_delta(session, cycle_id) if cycle_id is not None
               else [v for v in vocab if v.cycle_id is not None])
    uris = {d.id: d.uri for d in list_documents(
        session, ids={v.document_id for v in learned if v.document_id is not None})}
    rows = [{"token_id": v.token_id, "token": v.token_bytes.decode("utf-8", "backslashreplace"),
             "cycle_id": v.cycle_id, "document_id": v.document_id,
             "document": uris.get(v.document_id)} for v in learned]
    base = max((v.token_id for v in vocab if v.cycle_id is None), default=None)
    return rows, base


def checkpoint_rows(session, verify: bool = False) -> list[dict]:
    rows = [{"id": c.id, "cycle_id": c.cycle_id, "path": c.path, "sha256": c.sha256,
             "step": c.step, "vocab_size": c.vocab_size, "size_bytes": c.size_bytes,
             "latest": c.is_latest, "created": c.created, "pruned": c.pruned}
            for c in list_checkpoints(session)]
    for r in rows:
        r["exists"] = Path(r["path"]).exists()     # False for a pruned one, which says so
        if verify:
            r["ok"] = r["exists"] and file_sha256(r["path"]) == r["sha256"]
    return rows


MODEL_FIELDS = ("cycle_id", "step", "vocab_size", "size_bytes", "val_loss", "arch",
                "exportable", "latest", "pruned", "created", "path")


def model_rows(session) -> list[dict]:
    """`cllm models`: the checkpoints a data directory can serve or export, newest first: the
    cycle that committed each (what `--checkpoint N` names), its step, vocabulary, file size,
    the cycle's held-out loss (nats/token, mean over sources), its architecture (read from
    the file's header) and the llama.cpp architecture `cllm export` writes it as (None: it
    cannot be exported); pruned ones stay listed, with no file."""
    from agent.generation.export import architecture    # numpy only; keeps status light
    from engine.checkpoint import read_model_config
    from engine.config import arch_text
    from engine.errors import CllmError

    rows = []
    for c in list_checkpoints(session, newest_first=True):
        cyc = get_cycle(session, c.cycle_id) if c.cycle_id is not None else None
        arch, exportable = None, None
        if c.pruned is None and Path(c.path).exists():
            try:
                cfg = read_model_config(c.path)
                arch, exportable = arch_text(cfg) or "gpt2", architecture(cfg)
            except CllmError:
                pass
        rows.append({"cycle_id": c.cycle_id, "step": c.step, "vocab_size": c.vocab_size,
                     "size_bytes": c.size_bytes,
                     "val_loss": None if cyc is None or cyc.val_loss is None
                     else round(cyc.val_loss, 4),
                     "arch": arch, "exportable": exportable, "latest": c.is_latest,
                     "pruned": c.pruned, "created": c.created, "path": c.path})
    return rows


def forgetting_rows(session, source: Optional[str] = None) -> list[dict]:
    return [{k: e[k] for k in FORGETTING_FIELDS}
            for e in forgetting_by_source(session, source=source, by_cycle=True)]


def step_rows(session, cycle_id: Optional[int] = None, limit: Optional[int] = None,
              offset: int = 0) -> list[dict]:
    """The sampled per-step losses the trainer records, every cycle's (or one's), cycle by
    cycle; a page of them with `limit` and `offset`."""
    return [{"cycle_id": m.cycle_id, "step": m.step, "loss": m.loss, "lr": m.lr,
             "grad_norm": m.grad_norm, "tokens_per_s": m.tokens_per_s,
             "recorded": m.recorded}
            for m in list_step_metrics(session, cycle_id=cycle_id, limit=limit, offset=offset)]


def step_total(session, cycle_id: Optional[int] = None) -> int:
    """How many rows step_rows has (all pages)."""
    return count_step_metrics(session, cycle_id=cycle_id)


def status_view(session, data_dir: Path, database: str) -> dict:
    """What `cllm status --json` prints: the data directory and the store (`database`, as
    Store.describe() names it), the agent (running or not), the current cycle and its
    progress, the backlog, documents by status, the last checkpoint, the running cycle's live
    snapshot (agent/training/snapshot.py; None unless it is the one readers load), the
    trainer lease."""
    running = next(iter(list_cycles(session, status=CycleStatus.RUNNING, limit=1)), None)
    current = None
    if running is not None:
        last = latest_step_metric(session, running.id)
        current = {"id": running.id, "trigger": running.trigger,
                   "started": running.started, "documents": running.docs_new,
                   "step": last.step if last else 0,
                   "steps": (running.schedule or {}).get("steps"),
                   "loss": last.loss if last else None}
    queue = pending_summary(session)
    counts: dict[str, int] = {}
    for c in document_counts(session):
        counts[c["status"]] = counts.get(c["status"], 0) + c["documents"]
    ck = latest_checkpoint(session)
    last_ckpt = None if ck is None else {"path": ck.path, "sha256": ck.sha256, "step": ck.step,
                                         "cycle_id": ck.cycle_id, "vocab_size": ck.vocab_size,
                                         "created": ck.created}
    snap = current_snapshot(session, data_dir)     # what generate and serve load instead
    live = None if snap is None else {"path": str(snap.path), "sha256": snap.sha256,
                                      "cycle_id": snap.cycle_id, "step": snap.step,
                                      "cycle_step": snap.cycle_step,
                                      "base_cycle": snap.base_cycle}
    trainer = store_lease.current(session)
    pid = holder_pid(data_dir)
    phase = controls.trainer_phase(session)
    user_paused = controls.paused(session)
    # why training is paused: the running trainer's reasons (its battery, its load, the
    # user's), or the user's pause alone while no agent runs
    paused_by = (list(phase["paused_by"]) if pid and phase and phase["phase"] == "paused"
                 else [])
    if user_paused and "user" not in paused_by:
        paused_by.insert(0, "user")
    if current is not None:
        current["stale"] = pid is None  # left running by an agent that died; recovered on start
    return {"data_dir": str(Path(data_dir).resolve()), "database": database,
            "agent_running": pid is not None, "pid": pid, "current_cycle": current,
            "backlog": backlog_status(session), "pending_documents": queue["documents"],
            "pending_bytes": queue["bytes"] or 0, "documents": dict(sorted(counts.items())),
            "cycles_completed": count_cycles(session, status=CycleStatus.COMPLETED),
            "last_checkpoint": last_ckpt,
            "live_snapshot": live,
            "training_paused": user_paused,     # the users' pause (a control of the store)
            "paused_by": paused_by,             # every reason it is paused: user, battery, load
            # what the trainer does and why (learning, consolidating, converged, waiting,
            # idle, paused: with the reasons' sentences)
            "training_phase": phase,
            "trainer": None if trainer is None else {   # the store's trainer lease
                "host": trainer.host, "pid": trainer.pid, "data_dir": trainer.data_dir,
                "renewed": trainer.renewed_at, "expired": trainer.expired}}


TARGET_FIELDS = ("id", "kind", "location", "options", "enabled", "created", "last_scan")


def target_rows(session, include_disabled: bool = False) -> list[dict]:
    """Watched roots and crawl targets recorded in the store."""
    return [{f: getattr(t, f) for f in TARGET_FIELDS}
            for t in list_targets(session, include_disabled=include_disabled)]
