"""The vocabulary's history: the append-only token rows each cycle added (with the document
and neighbours they came from), read back whole, per cycle, or as growth over time.

Every function takes a Session and neither commits nor opens one.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import Cycle, VocabEntry


def record_vocab(session: Session, entries: Iterable[Mapping[str, Any]], *,
                 cycle_id: Optional[int] = None) -> int:
    """Append vocabulary entries: mappings with token_id, token_bytes and optionally
    document_id, left_id, right_id. Ids must be new and increasing (the vocabulary is
    append-only: ids are never reused). Returns how many were added."""
    allowed = {"token_id", "token_bytes", "document_id", "left_id", "right_id"}
    last = vocab_size(session) - 1
    rows = []
    for e in entries:
        extra = set(e) - allowed
        if extra:
            raise TypeError(f"unknown vocabulary fields: {', '.join(sorted(extra))}")
        if e["token_id"] <= last:
            raise ValueError(f"token id {e['token_id']} is not new (the vocabulary ends at"
                             f" {last}); ids are append-only")
        last = e["token_id"]
        rows.append(VocabEntry(cycle_id=cycle_id, **{**e, "token_bytes": bytes(e["token_bytes"])}))
    session.add_all(rows)
    session.flush()
    return len(rows)


def vocab_size(session: Session) -> int:
    """One past the highest token id (0 for an empty vocabulary)."""
    top = session.scalar(select(func.max(VocabEntry.token_id)))
    return 0 if top is None else top + 1


def load_vocab(session: Session) -> list[VocabEntry]:
    return list(session.scalars(select(VocabEntry).order_by(VocabEntry.token_id)))


def vocab_delta(session: Session, cycle_id: int) -> list[VocabEntry]:
    """The tokens a cycle added, by id."""
    return list(session.scalars(select(VocabEntry).where(VocabEntry.cycle_id == cycle_id)
                                .order_by(VocabEntry.token_id)))


def vocab_growth(session: Session) -> list[dict]:
    """[{"cycle_id", "added", "vocab_size"}]: the base vocabulary (cycle_id None) if any,
    then every cycle in order, with the size after it."""
    counts = dict(session.execute(select(VocabEntry.cycle_id, func.count())
                                  .group_by(VocabEntry.cycle_id)).all())
    size = counts.pop(None, 0)
    rows = [{"cycle_id": None, "added": size, "vocab_size": size}] if size else []
    for cid in session.scalars(select(Cycle.id).order_by(Cycle.id)):
        size += counts.get(cid, 0)
        rows.append({"cycle_id": cid, "added": counts.get(cid, 0), "vocab_size": size})
    return rows
