"""The training ledger: how much of each document's training text has been trained.

A document's `trainable_bytes` are the UTF-8 bytes of its training text (the held-out tail
cut off); `trained_bytes` sums, over cycles, the bytes of that text covered by trained
sequences (each byte once per pass); passes = trained / trainable, stable while the
vocabulary grows. A document is `learning` until it reaches its budget (`passes` x
trainable bytes), then `trained`. Each cycle's share of each document is a CycleDocument row,
written in the cycle's one transaction, so a crash loses only the cycle in progress.

The backlog is every pending or learning document; this module orders it (new arrivals
first), sums it for `cllm status`, and applies a changed budget. Functions take a Session
and do not commit. Retention of checkpoints lives here too: which files the rule keeps.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Optional

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, undefer

from .documents import _CHUNK, superseded_after_training, superseded_before_training
from .models import (Checkpoint, Cycle, CycleDocument, CycleStatus, Document, DocumentStatus,
                     utcnow)

BACKLOG_STATUSES = (DocumentStatus.PENDING, DocumentStatus.LEARNING)


def budget_bytes(trainable_bytes: int, passes: float) -> int:
    """Bytes a document must have trained to reach `passes` passes."""
    return int(math.ceil(passes * trainable_bytes - 1e-9))


@dataclass(frozen=True)
class BacklogEntry:
    """A document still to learn, without its text (see `document_texts`)."""
    id: int
    source: str
    status: str
    size_bytes: int
    trainable_bytes: Optional[int]   # None until a cycle first reads it
    trained_bytes: int
    first_seen: dt.datetime
    uri: str = ""
    # a consolidation sweep's entry: the trained bytes the sweep leaves it at (its share of
    # the sweep read from where it stopped, straight on across the end of its text)
    target_bytes: Optional[int] = None

    def left_bytes(self, passes: float, val_fraction: float) -> int:
        """Bytes still to train to the budget (estimated from its size before first read),
        or to its sweep's target."""
        if self.target_bytes is not None:
            return max(0, self.target_bytes - self.trained_bytes)
        tb = self.trainable_bytes
        if tb is None:
            tb = int(self.size_bytes * (1.0 - val_fraction))
        return max(0, budget_bytes(tb, passes) - self.trained_bytes)


def backlog(session: Session, *, ids: Optional[Iterable[int]] = None) -> list[BacklogEntry]:
    """Pending and learning documents in the order they are learned: breadth first by
    passes completed (a second pass of anything only after a first of everything), within
    that the ones being learned first (continued where the last cycle stopped), then in a
    fixed pseudo-random order (`shuffle_key`: the first minutes of a large tree cover all of
    it, not its first folders). `ids` restricts it to those documents, whatever their status
    (the trainer passes new arrivals this way, so they go first)."""
    q = select(Document.id, Document.source, Document.status, Document.size_bytes,
               Document.trainable_bytes, Document.trained_bytes, Document.first_seen,
               Document.uri)
    if ids is None:
        q = q.where(Document.status.in_(BACKLOG_STATUSES))
        rows = list(session.execute(q.order_by(Document.id)))
    else:
        wanted = sorted(set(ids))
        rows = []
        for i in range(0, len(wanted), _CHUNK):
            rows += session.execute(q.where(Document.id.in_(wanted[i:i + _CHUNK])))
        rows.sort(key=lambda r: r.id)
    entries = [BacklogEntry(r.id, r.source, r.status, r.size_bytes or 0, r.trainable_bytes,
                            r.trained_bytes or 0, r.first_seen, r.uri) for r in rows]

    def rank(e: BacklogEntry) -> tuple:
        done = e.trained_bytes // e.trainable_bytes if e.trainable_bytes else 0
        return (done, e.status != DocumentStatus.LEARNING, shuffle_key(e.id))

    return sorted(entries, key=rank)


def consolidation_order(session: Session, passes: float,
                        share_bytes: int) -> list[BacklogEntry]:
    """The documents of the current consolidation sweep, in the order it reads them (the
    fixed pseudo-random `shuffle_key`), each with the `target_bytes` the sweep leaves it at.

    A sweep reads every trained document's share: its whole text, or `share_bytes` of a
    longer one, from where it stopped (straight on across the end of its text), so a long
    document is read over several sweeps and no sweep ends on a few long texts. A
    document's level is the shares it has had past its floor (`passes`); the sweep is the
    documents at the lowest level, each read to one share more. A cycle given these ends when
    the sweep does ("backlog"), so sweeps end on cycle boundaries, each after the same
    documents in the same order: the held-out loss at the end of one is comparable with the
    next (agent/training/consolidation.py)."""
    ids = list(session.scalars(select(Document.id).where(
        Document.status == DocumentStatus.TRAINED, Document.trainable_bytes > 0)))
    entries = backlog(session, ids=ids) if ids else []
    if not entries:
        return []

    def floor(e: BacklogEntry) -> int:
        return budget_bytes(e.trainable_bytes, passes)

    def share(e: BacklogEntry) -> int:
        return max(1, min(e.trainable_bytes, share_bytes))

    def level(e: BacklogEntry) -> int:
        return max(0, e.trained_bytes - floor(e)) // share(e)

    low = min(level(e) for e in entries)
    return [replace(e, target_bytes=floor(e) + (low + 1) * share(e))
            for e in sorted(entries, key=lambda e: shuffle_key(e.id)) if level(e) == low]


def shuffle_key(document_id: int) -> int:
    """A fixed pseudo-random rank of a document id (Knuth's multiplicative hash)."""
    return (document_id * 2654435761) % 2 ** 32


def fresh_documents(session: Session, after_id: int) -> list[int]:
    """Ids of pending documents recorded after document `after_id` (the horizon of the last
    cycle's plan): the drops the next cycle goes first for."""
    return list(session.scalars(select(Document.id).where(
        Document.status == DocumentStatus.PENDING, Document.id > after_id)
        .order_by(Document.id)))


def document_horizon(session: Session) -> int:
    """The newest document id (0 for none): what a cycle's plan could see."""
    return session.scalar(select(func.max(Document.id))) or 0


def document_texts(session: Session, ids: Iterable[int]) -> dict[int, str]:
    """{id: text} of the given documents (refused ones have none and are left out)."""
    wanted = sorted(set(ids))
    out: dict[int, str] = {}
    for i in range(0, len(wanted), _CHUNK):
        for d in session.scalars(select(Document).where(Document.id.in_(wanted[i:i + _CHUNK]))
                                 .options(undefer(Document.text))):
            if d.text is not None:
                out[d.id] = d.text
    return out


def record_cycle_credits(session: Session, cycle_id: int,
                         credits: Mapping[int, tuple[int, int]],
                         trainable: Mapping[int, int], passes: float) -> dict:
    """What cycle `cycle_id` trained: {document id: (backlog bytes, replay bytes)}, with the
    trainable bytes of every document it read. Backlog bytes count toward the document's
    passes; a pending or learning document that reaches `passes` becomes trained, one
    below it learning. A document deleted meanwhile keeps its status but records its share;
    one superseded meanwhile (skipped "before training": the store did not know this cycle
    was training it) is deleted "superseded by document N after training", since it was. Returns {"bytes_new", "bytes_replay", "documents", "completed"}."""
    out = {"bytes_new": 0, "bytes_replay": 0, "documents": 0, "completed": []}
    ids = sorted(set(credits) | set(trainable))
    now = utcnow()
    for i in range(0, len(ids), _CHUNK):
        for doc in session.scalars(select(Document).where(Document.id.in_(ids[i:i + _CHUNK]))):
            new, replay = credits.get(doc.id, (0, 0))
            if doc.id in trainable:
                doc.trainable_bytes = int(trainable[doc.id])
            if new or replay:
                session.add(CycleDocument(cycle_id=cycle_id, document_id=doc.id,
                                          new_bytes=int(new), replay_bytes=int(replay)))
                out["documents"] += 1
                out["bytes_new"] += int(new)
                out["bytes_replay"] += int(replay)
            if new:
                doc.trained_bytes = (doc.trained_bytes or 0) + int(new)
                doc.cycle_id = cycle_id
                doc.updated = now
                if doc.status == DocumentStatus.SKIPPED and doc.sha256 is not None:
                    # superseded while this cycle trained it: trained after all, not live
                    doc.status = DocumentStatus.DELETED
                    doc.reason = superseded_after_training(doc.reason)
                if doc.status in BACKLOG_STATUSES and doc.trainable_bytes is not None:
                    done = doc.trained_bytes >= budget_bytes(doc.trainable_bytes, passes)
                    if done and doc.status != DocumentStatus.TRAINED:
                        out["completed"].append(doc.id)
                    doc.status = DocumentStatus.TRAINED if done else DocumentStatus.LEARNING
    session.flush()
    return out


def apply_budget(session: Session, passes: float) -> dict:
    """Make statuses agree with a (changed) `--passes`: trained documents below it learn
    again, learning ones that already reach it are trained. Returns the counts moved."""
    need = Document.trained_bytes < passes * Document.trainable_bytes - 1e-9
    again = session.execute(update(Document).where(
        Document.status == DocumentStatus.TRAINED, Document.trainable_bytes.is_not(None), need)
        .values(status=DocumentStatus.LEARNING).execution_options(synchronize_session=False)
    ).rowcount
    done = session.execute(update(Document).where(
        Document.status == DocumentStatus.LEARNING, Document.trainable_bytes.is_not(None), ~need)
        .values(status=DocumentStatus.TRAINED).execution_options(synchronize_session=False)
    ).rowcount
    session.expire_all()
    return {"learning_again": again, "trained": done}


def undo_cycle_credits(session: Session, cycle_ids: Iterable[int]) -> int:
    """Take back what the given cycles trained (they were rolled back): their backlog bytes
    leave each document's count, which becomes pending (nothing left) or learning; their
    CycleDocument rows are removed; a version superseded after training that has nothing
    trained left was superseded before training (skipped). Returns the documents changed."""
    ids = sorted(set(cycle_ids))
    if not ids:
        return 0
    per_doc: dict[int, int] = {}
    for i in range(0, len(ids), _CHUNK):
        for cd in session.scalars(select(CycleDocument).where(
                CycleDocument.cycle_id.in_(ids[i:i + _CHUNK]))):
            if cd.new_bytes:        # replay alone changed nothing in the ledger
                per_doc[cd.document_id] = per_doc.get(cd.document_id, 0) + cd.new_bytes
    doc_ids = sorted(per_doc)
    for i in range(0, len(doc_ids), _CHUNK):
        for doc in session.scalars(select(Document).where(
                Document.id.in_(doc_ids[i:i + _CHUNK]))):
            doc.trained_bytes = max(0, (doc.trained_bytes or 0) - per_doc[doc.id])
            if doc.cycle_id in ids:
                doc.cycle_id = None
            if doc.status in (DocumentStatus.TRAINED, DocumentStatus.LEARNING):
                doc.status = (DocumentStatus.LEARNING if doc.trained_bytes > 0
                              else DocumentStatus.PENDING)
                doc.reason = None
            elif doc.status == DocumentStatus.DELETED and doc.trained_bytes == 0:
                before = superseded_before_training(doc.reason)
                if before is not None:      # superseded, and now nothing of it was trained
                    doc.status, doc.reason = DocumentStatus.SKIPPED, before
    for i in range(0, len(ids), _CHUNK):
        session.execute(delete(CycleDocument).where(CycleDocument.cycle_id.in_(ids[i:i + _CHUNK]))
                        .execution_options(synchronize_session=False))
    # a document's cycle is again the last one that still counts for it
    for i in range(0, len(doc_ids), _CHUNK):
        for doc_id, last in session.execute(
                select(CycleDocument.document_id, func.max(CycleDocument.cycle_id))
                .where(CycleDocument.document_id.in_(doc_ids[i:i + _CHUNK]),
                       CycleDocument.new_bytes > 0)
                .group_by(CycleDocument.document_id)):
            session.get(Document, doc_id).cycle_id = last
    session.flush()
    return len(doc_ids)


def summary(session: Session, passes: float, val_fraction: float) -> dict:
    """The backlog for `cllm status`: documents and bytes still to learn, in all and per
    source (with the documents already trained), for an ETA at the recent bytes/s."""
    by_source: dict[str, dict] = {}
    total = {"documents": 0, "bytes": 0}
    for e in backlog(session):
        left = e.left_bytes(passes, val_fraction)
        src = by_source.setdefault(e.source, {"source": e.source, "documents": 0, "bytes": 0,
                                              "trained": 0})
        src["documents"] += 1
        src["bytes"] += left
        total["documents"] += 1
        total["bytes"] += left
    for source, n in session.execute(select(Document.source, Document.id).where(
            Document.status == DocumentStatus.TRAINED)).all():
        by_source.setdefault(source, {"source": source, "documents": 0, "bytes": 0,
                                      "trained": 0})["trained"] += 1
    total["sources"] = sorted(by_source.values(), key=lambda r: r["source"])
    return total


# ----------------------------------------------------------------------------- retention

def checkpoints_to_prune(session: Session, keep_latest: int, every_s: float = 3600.0,
                         protect_cycles: Iterable[int] = ()) -> list[Checkpoint]:
    """Checkpoints whose files the retention rule lets go: all but the newest `keep_latest`
    (and the latest row, always), except the first one of every `every_s` of checkpoint
    history (one per hour by default), counted from the oldest, and those of the cycles in
    `protect_cycles` (the consolidation run's best, which a restore may return to). Already
    pruned ones are not listed."""
    rows = list(session.scalars(select(Checkpoint).where(Checkpoint.pruned.is_(None))
                                .order_by(Checkpoint.id)))
    if len(rows) <= keep_latest:
        return []
    keep = {c.id for c in rows[-keep_latest:]} if keep_latest > 0 else set()
    keep |= {c.id for c in rows if c.is_latest}
    protect = set(protect_cycles)
    keep |= {c.id for c in rows if c.cycle_id in protect}
    first = rows[0].created
    seen_slots: set[int] = set()
    all_rows = list(session.scalars(select(Checkpoint).order_by(Checkpoint.id)))
    for c in all_rows:        # slots are counted over every checkpoint ever written
        slot = int((c.created - first).total_seconds() // every_s) if c.created >= first else 0
        if slot not in seen_slots:
            seen_slots.add(slot)
            if c.pruned is None:
                keep.add(c.id)
    return [c for c in rows if c.id not in keep]


def mark_pruned(session: Session, checkpoint_ids: Iterable[int]) -> int:
    ids = sorted(set(checkpoint_ids))
    n = 0
    for i in range(0, len(ids), _CHUNK):
        n += session.execute(update(Checkpoint).where(Checkpoint.id.in_(ids[i:i + _CHUNK]))
                             .values(pruned=utcnow(), is_latest=False)
                             .execution_options(synchronize_session=False)).rowcount
    session.expire_all()
    return n


def backlog_status(session: Session, *, default_passes: float = 2.0,
                   val_fraction: float = 0.1, recent: int = 5) -> dict:
    """The backlog as `cllm status` shows it: `summary` at the budget of the latest cycle
    (else `default_passes`), with the learning rate of the recent completed cycles: tokens/s,
    backlog bytes/s and an ETA in seconds (None until a cycle measured the rate)."""

    cycles = list(session.scalars(select(Cycle).where(Cycle.status == CycleStatus.COMPLETED)
                                  .order_by(Cycle.id.desc()).limit(recent)))
    passes = next((c.schedule["passes"] for c in cycles
                   if c.schedule and c.schedule.get("passes")), default_passes)
    out = summary(session, passes, val_fraction)
    timed = [c for c in cycles if c.bytes_new and c.schedule and c.schedule.get("seconds")]
    seconds = sum(c.schedule["seconds"] for c in timed)
    bps = sum(c.bytes_new for c in timed) / seconds if seconds > 0 else None
    out.update(passes=passes, bytes_per_s=bps,
               tokens_per_s=cycles[0].tokens_per_s if cycles else None,
               eta_s=(out["bytes"] / bps if bps else None) if out["bytes"] else 0.0)
    return out
