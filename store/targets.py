"""Crawl targets and watched roots: what the agent watches and crawls, kept across restarts.

Functions take a Session and do not commit; they return CrawlTarget rows of that session.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import StoreError
from .models import TARGET_KINDS, CrawlTarget


def add_target(session: Session, kind: str, location: str,
               options: Optional[Mapping[str, Any]] = None) -> tuple[CrawlTarget, bool]:
    """Add a "watch" root or a "crawl" target; (target, True) when new. Adding an existing
    one re-enables it and, when `options` is given, replaces its options."""
    if kind not in TARGET_KINDS:
        raise ValueError(f"kind must be one of {TARGET_KINDS}, not {kind!r}")
    limit = CrawlTarget.__table__.c.location.type.length
    if len(location) > limit:     # PostgreSQL would refuse it with a DataError mid-session
        raise StoreError(f"target {location[:60]}... is {len(location)} characters long",
                         f"use a path or URL of at most {limit} characters")
    target = session.scalars(select(CrawlTarget).where(
        CrawlTarget.kind == kind, CrawlTarget.location == location)).one_or_none()
    created = target is None
    if created:
        target = CrawlTarget(kind=kind, location=location, options=dict(options or {}))
        session.add(target)
    else:
        target.enabled = True
        if options is not None:
            target.options = dict(options)
    session.flush()
    return target, created


def list_targets(session: Session, kind: Optional[str] = None, *,
                 include_disabled: bool = False) -> list[CrawlTarget]:
    q = select(CrawlTarget).order_by(CrawlTarget.id)
    if kind is not None:
        q = q.where(CrawlTarget.kind == kind)
    if not include_disabled:
        q = q.where(CrawlTarget.enabled.is_(True))
    return list(session.scalars(q))


def remove_target(session: Session, target_id: int) -> bool:
    """Delete a target; its documents stay, with no target."""
    target = session.get(CrawlTarget, target_id)
    if target is None:
        return False
    session.delete(target)
    session.flush()
    return True
