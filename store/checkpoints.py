"""Checkpoint rows: recording a checkpoint's file and SHA-256, which one is the latest, and
listing them (with or without those whose files retention pruned).

Every function takes a Session and neither commits nor opens one.
"""
from __future__ import annotations

from typing import Optional

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import Checkpoint, get_row


def record_checkpoint(session: Session, *, path: str, sha256: str, step: int, vocab_size: int,
                      cycle_id: Optional[int] = None, size_bytes: Optional[int] = None,
                      latest: bool = True) -> Checkpoint:
    """Record a written checkpoint file; by default it becomes the latest."""
    ckpt = Checkpoint(path=str(path), sha256=sha256, step=step, vocab_size=vocab_size,
                      cycle_id=cycle_id, size_bytes=size_bytes, is_latest=False)
    session.add(ckpt)
    session.flush()
    if latest:
        set_latest_checkpoint(session, ckpt.id)
    return ckpt


def set_latest_checkpoint(session: Session, checkpoint_id: int) -> Checkpoint:
    """Make one checkpoint the latest (e.g. fall back after the newest failed its hash)."""
    ckpt = get_row(session, Checkpoint, checkpoint_id)
    session.execute(update(Checkpoint)
                    .where(Checkpoint.is_latest.is_(True), Checkpoint.id != checkpoint_id)
                    .values(is_latest=False).execution_options(synchronize_session="fetch"))
    ckpt.is_latest = True
    session.flush()
    return ckpt


def latest_checkpoint(session: Session) -> Optional[Checkpoint]:
    return session.scalars(select(Checkpoint).where(Checkpoint.is_latest.is_(True))).one_or_none()


def list_checkpoints(session: Session, *, cycle_id: Optional[int] = None,
                     newest_first: bool = False, limit: Optional[int] = None,
                     with_pruned: bool = True) -> list[Checkpoint]:
    """Checkpoint rows; `with_pruned=False` leaves out those whose file retention deleted."""
    q = select(Checkpoint).order_by(Checkpoint.id.desc() if newest_first else Checkpoint.id)
    if not with_pruned:
        q = q.where(Checkpoint.pruned.is_(None))
    if cycle_id is not None:
        q = q.where(Checkpoint.cycle_id == cycle_id)
    if limit is not None:
        q = q.limit(limit)
    return list(session.scalars(q))
