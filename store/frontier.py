"""The crawler's persisted URLs: the dedupe of what was handled, and the frontier.

A row per canonical URL: what fetching it gave (a UrlStatus, the HTTP status, the reason,
the document), or status queued with the `depth` it was found at: links a crawl found and
had not fetched when it stopped, which the next crawl of that origin picks up. FINAL
statuses are not fetched again until a re-crawl finds them older than its interval
(`fresh_after`, `due_under`); the others are retried. A stored page keeps its ETag and
Last-Modified for a conditional re-fetch.

Several crawlers (agents on several machines, one store) share the frontier: before it
fetches a URL a crawler claims it (`claim_url`: a row lock taken with SKIP LOCKED on
PostgreSQL, so racing crawlers never wait on each other; SQLite's write transactions are
serial anyway), and recording the outcome releases the claim. A claim expires, so the URLs
of a crawler that died pass to the others.

Canonicalisation is the crawler's job (agent/web/urls.py); these functions take the canonical
form as given. They take a Session and do not commit.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from typing import Iterable, Optional

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .documents import mark_deleted
from .lease import db_now
from .models import FINAL_URL_STATUSES, Document, FetchedUrl, UrlStatus, utcnow

FRONTIER_LIMIT = 100_000  # queued URLs one crawl takes back at most


def url_key(canonical_url: str) -> str:
    """Hex SHA-256 of the canonical URL: the unique key (URLs can outgrow a btree entry)."""
    return hashlib.sha256(canonical_url.encode("utf-8", "surrogatepass")).hexdigest()


def url_handled(session: Session, canonical_url: str, *,
                fresh_after: Optional[dt.datetime] = None) -> bool:
    """Whether the URL was handled for good (a FINAL status), and, with `fresh_after`, last
    fetched at or after it: a crawl does not fetch it (again). Transient failures and policy
    outcomes (refused, disallowed) are retried; queued ones are waiting; with `fresh_after`
    a handled URL fetched before it is due for a re-crawl."""
    row = session.execute(select(FetchedUrl.status, FetchedUrl.fetched_at).where(
        FetchedUrl.url_sha256 == url_key(canonical_url))).first()
    if row is None or row.status not in FINAL_URL_STATUSES:
        return False
    return fresh_after is None or row.fetched_at >= fresh_after


def validators(session: Session, canonical_url: str) -> tuple[Optional[str], Optional[str]]:
    """(ETag, Last-Modified) of the URL's stored page, for a conditional re-fetch; (None,
    None) unless its content is stored (status fetched)."""
    row = get_url(session, canonical_url)
    if row is None or row.status != UrlStatus.FETCHED or row.document_id is None:
        return None, None
    return row.etag, row.last_modified


def mark_unchanged(session: Session, canonical_url: str) -> None:
    """A conditional re-fetch answered 304: only the time of the last fetch moves."""
    row = get_url(session, canonical_url)
    if row is not None:
        row.fetched_at = utcnow()
        row.claimed_by = row.claim_expires = None
        session.flush()


def claim_url(session: Session, canonical_url: str, holder: str, ttl_s: float, *,
              fresh_after: Optional[dt.datetime] = None, depth: Optional[int] = None) -> bool:
    """Take the right to fetch the URL now for `holder` (until `ttl_s` seconds from now, or
    until its outcome is recorded). False when it was handled for good (since
    `fresh_after`, if given: see url_handled) or another crawler's claim on it holds."""

    now = db_now(session)
    key = url_key(canonical_url)
    row = session.scalars(select(FetchedUrl).where(FetchedUrl.url_sha256 == key)
                          .with_for_update(skip_locked=True)).one_or_none()
    if row is None:
        if session.scalar(select(FetchedUrl.id).where(FetchedUrl.url_sha256 == key)) is not None:
            return False            # locked this instant by a crawler claiming it
        try:
            with session.begin_nested():
                session.add(FetchedUrl(url=canonical_url, url_sha256=key, status=UrlStatus.QUEUED,
                                       reason="claimed", depth=depth, claimed_by=holder,
                                       claim_expires=now + dt.timedelta(seconds=ttl_s)))
        except IntegrityError:      # another crawler recorded it first
            return False
        return True
    if row.status in FINAL_URL_STATUSES and (fresh_after is None or row.fetched_at >= fresh_after):
        return False
    if row.claimed_by not in (None, holder) and row.claim_expires is not None \
            and row.claim_expires > now:
        return False
    row.claimed_by, row.claim_expires = holder, now + dt.timedelta(seconds=ttl_s)
    session.flush()
    return True


def forget_page(session: Session, canonical_url: str, reason: str) -> int:
    """The page at the URL is gone from its site (404/410): its document is marked deleted
    (store.documents.mark_deleted). Returns how many rows changed."""

    row = get_url(session, canonical_url)
    if row is None or row.document_id is None:
        return 0
    doc = session.get(Document, row.document_id)
    return 0 if doc is None else mark_deleted(session, doc.uri, reason=reason)


def due_under(session: Session, origin: str, *, max_depth: int, fetched_before: dt.datetime,
              limit: int = FRONTIER_LIMIT) -> list[tuple[str, int]]:
    """(url, depth) of the handled URLs of `origin` last fetched before `fetched_before`, at
    most `max_depth` deep (no depth: `max_depth`), oldest fetch first: what a re-crawl
    revisits (a page answering 304 gives no links to reach them by)."""
    found = session.execute(
        select(FetchedUrl.url, FetchedUrl.depth)
        .where(FetchedUrl.status.in_(sorted(FINAL_URL_STATUSES)),
               FetchedUrl.fetched_at < fetched_before,
               FetchedUrl.url.startswith(origin + "/", autoescape=True),
               or_(FetchedUrl.depth.is_(None), FetchedUrl.depth <= max_depth))
        .order_by(FetchedUrl.fetched_at, FetchedUrl.id).limit(limit)).all()
    return [(url, max_depth if depth is None else depth) for url, depth in found]


def last_fetched(session: Session, canonical_url: str) -> Optional[dt.datetime]:
    """When the URL was last fetched (any outcome), or None if it never was."""
    return session.scalar(select(FetchedUrl.fetched_at).where(
        FetchedUrl.url_sha256 == url_key(canonical_url), FetchedUrl.status != UrlStatus.QUEUED))


def get_url(session: Session, canonical_url: str) -> Optional[FetchedUrl]:
    return session.scalars(select(FetchedUrl).where(
        FetchedUrl.url_sha256 == url_key(canonical_url))).one_or_none()


def record_url(session: Session, canonical_url: str, *, status: str,
               http_status: Optional[int] = None, document_id: Optional[int] = None,
               reason: Optional[str] = None, depth: Optional[int] = None,
               validators: Optional[tuple[Optional[str], Optional[str]]] = None) -> FetchedUrl:
    """Record (or update, when fetched again) the outcome of fetching a canonical URL.
    `depth` is kept from an earlier record when not given; so are the page's (ETag,
    Last-Modified) `validators`, which a fetch that stored content sets."""
    row = get_url(session, canonical_url)
    etag, modified = validators if validators is not None else (None, None)
    if row is None:
        row = FetchedUrl(url=canonical_url, url_sha256=url_key(canonical_url), status=status,
                         http_status=http_status, document_id=document_id, reason=reason,
                         depth=depth, etag=etag, last_modified=modified)
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
    row.claimed_by = row.claim_expires = None        # the outcome releases a claim
    if depth is not None:
        row.depth = depth
    if validators is not None:
        row.etag, row.last_modified = etag, modified
    row.fetched_at = utcnow()
    session.flush()
    return row


def queue_urls(session: Session, canonical_urls: Iterable[str], depth: int) -> int:
    """Put links found at `depth` on the persisted frontier (status queued), so a crawl that
    stops early resumes instead of losing them. URLs already recorded, with any status, are
    left as they are. Returns how many were queued."""
    n = 0
    for url in canonical_urls:
        if get_url(session, url) is None:
            record_url(session, url, status=UrlStatus.QUEUED, reason=f"found at depth {depth}",
                       depth=depth)
            n += 1
    return n


def queued_under(session: Session, origin: str, *, max_depth: int,
                 limit: int = FRONTIER_LIMIT, unclaimed: bool = False) -> list[tuple[str, int]]:
    """(url, depth) of the queued URLs of `origin` ("https://example.com") found at most
    `max_depth` links deep, in the order they were found (with `unclaimed`, only those no
    crawler's live claim holds). A queued row without a depth counts as `max_depth` deep."""
    q = (select(FetchedUrl.url, FetchedUrl.depth)
         .where(FetchedUrl.status == UrlStatus.QUEUED,
                FetchedUrl.url.startswith(origin + "/", autoescape=True),
                or_(FetchedUrl.depth.is_(None), FetchedUrl.depth <= max_depth)))
    if unclaimed:

        q = q.where(or_(FetchedUrl.claimed_by.is_(None), FetchedUrl.claim_expires <= db_now(session)))
    found = session.execute(q.order_by(FetchedUrl.id).limit(limit)).all()
    return [(url, max_depth if depth is None else depth) for url, depth in found]


def list_urls(session: Session, *, status: Optional[str] = None,
              limit: Optional[int] = None, offset: int = 0) -> list[FetchedUrl]:
    """Recorded URLs in the order they were first recorded, optionally of one status; a
    page of them with `limit` and `offset`."""
    q = select(FetchedUrl).order_by(FetchedUrl.id)
    if status:
        q = q.where(FetchedUrl.status == status)
    if limit:
        q = q.limit(limit)
    if offset:
        q = q.offset(offset)
    return list(session.scalars(q))


def count_urls(session: Session, *, status: Optional[str] = None) -> int:
    """How many URLs are recorded (of one status): counted in SQL, no row loaded."""
    q = select(func.count(FetchedUrl.id))
    if status:
        q = q.where(FetchedUrl.status == status)
    return session.scalar(q)


def urls_changed(session: Session) -> tuple[int, Optional[dt.datetime]]:
    """(how many URLs are recorded, the latest time one was recorded or fetched): what
    changes when the crawler records anything, read in one SQL aggregate (the dashboard's
    event feed asks on every store change)."""
    n, latest = session.execute(select(func.count(FetchedUrl.id), func.max(FetchedUrl.fetched_at))).one()
    return n, latest
