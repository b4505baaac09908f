"""The crawler's persisted URL dedupe: which canonical URLs were already handled.

Canonicalisation is the crawler's job; these functions take the canonical form as given.
They take a Session and do not commit.
"""
from __future__ import annotations

import hashlib
from typing import Optional

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import FetchedUrl, utcnow


def url_key(canonical_url: str) -> str:
    """Hex SHA-256 of the canonical URL: the unique key (URLs can outgrow a btree entry)."""
    return hashlib.sha256(canonical_url.encode("utf-8", "surrogatepass")).hexdigest()


def url_seen(session: Session, canonical_url: str) -> bool:
    """Whether the crawler has recorded this canonical URL (with any status)."""
    return session.scalar(select(FetchedUrl.id).where(
        FetchedUrl.url_sha256 == url_key(canonical_url))) is not None


def get_url(session: Session, canonical_url: str) -> Optional[FetchedUrl]:
    return session.scalars(select(FetchedUrl).where(
        FetchedUrl.url_sha256 == url_key(canonical_url))).one_or_none()


def record_url(session: Session, canonical_url: str, *, status: str,
               http_status: Optional[int] = None, document_id: Optional[int] = None,
               reason: Optional[str] = None) -> FetchedUrl:
    """Record (or update, when fetched again) the outcome of fetching a canonical URL."""
    row = get_url(session, canonical_url)
    if row is None:
        row = FetchedUrl(url=canonical_url, url_sha256=url_key(canonical_url), status=status,
                         http_status=http_status, document_id=document_id, reason=reason)
        try:
            with session.begin_nested():
                session.add(row)
            return row
        except IntegrityError:
            row = get_url(session, canonical_url)  # recorded by a concurrent crawler
            if row is None:
                raise
    row.status, row.http_status, row.reason = status, http_status, reason
    row.document_id = document_id
    row.fetched_at = utcnow()
    session.flush()
    return row
