"""The crawler: source trees and web pages in, documents (or recorded refusals) out.

(a) `Crawler.walk(folder)`: a recursive walk (paths.walk_files: include/exclude patterns,
    `.gitignore` files; credentials and the data directory refused and recorded) whose
    files go through the Ingestor (binary detection, size cap, key material).
(b) `Crawler.crawl(url)`: a breadth-first HTTP/HTTPS crawl within depth and page limits
    (and at most `max_links` links taken from one page), optionally staying on the start
    host. Each page is fetched by fetch.Fetcher (SSRF guard on every hop, robots.txt,
    per-host delay, retries, redirects, size caps), its HTML reduced to its main text and
    links (html.py), and stored through the Ingestor. Every
    URL's outcome is recorded in the store, and so is the frontier (links found but not yet
    fetched, with their depth), so a crawl stopped by the page limit, a signal or a crash
    resumes where it stopped and a restart does not fetch handled URLs again.

Also holds `iter_targets` (what a CLI target is: folder, file or URL) and `record_target`
(the one way a target becomes a crawl_targets row: URLs canonical, paths absolute).

A crawl with `recrawl_interval` fetches again the handled URLs last fetched longer ago than
that, conditionally (If-None-Match / If-Modified-Since with the stored validators): a 304
changes nothing, a changed page becomes a new version of its document (record_text), a 404
or 410 marks its document deleted. `CrawlLoop` (below) is the agent's crawl thread: every
--crawl target once at start, then the re-crawl schedule and the targets users add.

Everything interruptible waits on `stop_event`. The crawler does not run JavaScript, and
writes no SQL (store.frontier and store.targets do).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

from agent.web.fetch import (MAX_BODY_BYTES, MAX_REDIRECTS, USER_AGENT, FetchFailed, Fetcher, Interrupted,
                         Response)
from agent.web.html import MAX_LINKS, extract_main_text, looks_like_html, meta_charset, page_links
from agent.inputs.ingest import Ingestor, summarize
from agent.inputs.paths import PathFilter, file_uri, walk_files
from agent.settings import AgentConfig
from agent.web.ssrf import HostPolicy
from agent.inputs.text import DEFAULT_MAX_FILE_BYTES, Refused, decode_text
from agent.web.urls import canonical_url, origin, scheme_of
from engine.errors import CllmError
from store.errors import StoreError
from store import targets as target_store
from store import frontier
from store.documents import Outcome
from store.lease import new_holder_id
from store.models import TargetKind, UrlStatus, utcnow
from store.targets import list_targets

__all__ = ["CrawlError", "CrawlReport", "Crawler", "iter_targets", "record_target"]

if TYPE_CHECKING:  # pragma: no cover
    from store import Store

log = logging.getLogger(__name__)

_URL_STATUS_OF = {  # what storing a fetched page's text means for its URL
    Outcome.ADDED: UrlStatus.FETCHED, Outcome.UNCHANGED: UrlStatus.FETCHED,
    Outcome.RESTORED: UrlStatus.FETCHED, Outcome.DUPLICATE: UrlStatus.DUPLICATE,
    Outcome.REFUSED: UrlStatus.SKIPPED,
}


FAILURE_OUTCOMES = frozenset({UrlStatus.FAILED, UrlStatus.ERROR, UrlStatus.REFUSED, UrlStatus.DISALLOWED})
PROGRESS_EVERY_S = 10.0  # a crawl logs its progress at INFO this often (checked between pages)


class CrawlError(CllmError):
    """A crawl cannot start (bad target or option)."""


@dataclass
class CrawlReport:
    """What one walk or crawl did: counts by outcome, bytes read, and each item."""

    counts: Counter = field(default_factory=Counter)
    bytes_read: int = 0
    items: list = field(default_factory=list)  # (uri, outcome, reason)

    def add(self, uri: str, outcome: str, reason: str | None = None, nbytes: int = 0) -> None:
        self.counts[outcome] += 1
        self.bytes_read += nbytes
        self.items.append((uri, outcome, reason))

    @property
    def failed(self) -> bool:
        """Nothing came of it but failures and refusals (at least one)."""
        return bool(self.items) and all(o in FAILURE_OUTCOMES for _, o, _ in self.items)

    def merge(self, other: "CrawlReport") -> None:
        self.counts.update(other.counts)
        self.bytes_read += other.bytes_read
        self.items.extend(other.items)


class Crawler:
    """Walks source trees and crawls http(s) sites into the store.

    One Crawler belongs to one thread. `stop_event` interrupts walks, crawls and waits.
    Use as a context manager, or call close(), to release the HTTP connections.
    """

    def __init__(self, store: "Store", *, allow_private_hosts: bool = False,
                 allow_networks: Iterable[str] = (), max_pages: int = 100, max_depth: int = 2,
                 delay: float = 1.0, timeout: float = 10.0, max_body_bytes: int = MAX_BODY_BYTES,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, retries: int = 3, backoff: float = 1.0,
                 max_retry_after: float = 120.0, max_redirects: int = MAX_REDIRECTS,
                 user_agent: str = USER_AGENT, stay_on_host: bool = True,
                 stop_event: threading.Event | None = None, ingestor: Ingestor | None = None,
                 include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
                 follow_symlinks: bool = False, resolver=None, recrawl_interval: float = 0.0,
                 claim_ttl: float | None = None, max_links: int = MAX_LINKS,
                 own_dirs: Iterable[str] = ()) -> None:
        if (max_pages < 1 or max_depth < 0 or delay < 0 or timeout <= 0 or retries < 0
                or max_links < 1):
            raise CrawlError("max_pages >= 1, max_depth >= 0, delay >= 0, timeout > 0, retries >= 0, "
                             "max_links >= 1 required", hint="check the crawl options")
        if max_redirects > MAX_REDIRECTS:
            raise CrawlError(f"at most {MAX_REDIRECTS} redirects", hint=f"pass max_redirects <= {MAX_REDIRECTS}")
        try:
            self.policy = HostPolicy.build(allow_private_hosts, allow_networks, resolver)
        except ValueError as e:
            raise CrawlError(str(e), hint="use CIDR, e.g. --allow-network 10.1.0.0/16") from None
        self.store = store
        # the frontier is shared with every crawler on this store: a URL is fetched by the
        # one that claims it; a claim outlives the longest fetch (3 x timeout) with margin
        self.holder = new_holder_id()
        self.claim_ttl = claim_ttl if claim_ttl is not None else 4 * timeout + 60.0
        self.recrawl_interval = recrawl_interval  # seconds; 0: a handled URL is never fetched again
        self.clock = time.monotonic  # progress is logged at page boundaries, every PROGRESS_EVERY_S
        self.progress_every = PROGRESS_EVERY_S
        self.max_pages, self.max_depth, self.max_links = max_pages, max_depth, max_links
        self.stay_on_host = stay_on_host
        self.stop_event = stop_event or threading.Event()
        # own_dirs (the data directory) and credentials are never read (paths.PrivateRules):
        # the walk records them as refused; an ingestor given from outside has its own rules
        self.path_filter = PathFilter(include, exclude, own_dirs=own_dirs)
        self.ingestor = ingestor or Ingestor(store, max_file_bytes=max_file_bytes,
                                             follow_symlinks=follow_symlinks,
                                             private=self.path_filter.private)
        self.follow_symlinks = follow_symlinks
        self.fetcher = Fetcher(self.policy, stop_event=self.stop_event, user_agent=user_agent, delay=delay,
                               timeout=timeout, max_body_bytes=max_body_bytes, retries=retries,
                               backoff=backoff, max_retry_after=max_retry_after,
                               max_redirects=max_redirects)

    def __enter__(self) -> "Crawler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.fetcher.close()

    @property
    def client(self):
        """The httpx client every request goes through (tests add event hooks to it)."""
        return self.fetcher.client

    # (a) source trees
    def walk(self, folder: str, *, source: str | None = None, target_id: int | None = None,
             gitignore: bool = True) -> CrawlReport:
        """Ingest every eligible file under `folder` once."""
        report = CrawlReport()
        folder = os.path.abspath(folder)
        if not os.path.isdir(folder):
            raise CrawlError(f"{folder} is not a folder", hint="pass an existing folder or an http(s) URL")
        source = source or folder
        with self.ingestor.batch():
            for item in walk_files(folder, self.path_filter, follow_symlinks=self.follow_symlinks,
                                   gitignore=gitignore, stop_event=self.stop_event):
                if item.reason is not None:
                    res = self.ingestor.refuse(file_uri(item.path), item.reason, source=source,
                                               target_id=target_id)
                else:
                    res = self.ingestor.ingest_file(item.path, source=source, target_id=target_id,
                                                    root=folder)
                report.add(res.uri, res.outcome, res.reason, res.size_bytes or 0)
        if self.stop_event.is_set():
            report.counts["interrupted"] += 1
        return report

    # (b) the web
    def crawl(self, url: str, *, source: str | None = None, target_id: int | None = None) -> CrawlReport:
        """Breadth-first crawl from `url` within the depth and page limits."""
        report = CrawlReport()
        try:
            start = canonical_url(url)
        except Refused as r:
            raise CrawlError(f"cannot crawl {url!r}: {r.reason}", hint="pass an http(s) URL") from None
        source = source or origin(start)
        start_host = _hostname(start)
        fresh_after = (utcnow() - dt.timedelta(seconds=self.recrawl_interval)
                       if self.recrawl_interval > 0 else None)
        # links found by an earlier run that stopped (page limit, interrupt, crash) come back,
        # and so do the pages due for a re-crawl (a page answering 304 gives no links)
        frontier: deque[tuple[str, int]] = deque(
            dict.fromkeys([(start, 0)] + self._frontier_left(start, fresh_after)))
        queued = {u for u, _ in frontier}
        pages = 0
        last_progress = self.clock()
        try:
            while pages < self.max_pages:
                if not frontier:            # links other crawlers of this store queued
                    frontier.extend((u, d) for u, d in self._frontier_left(start, None, True)
                                    if u not in queued)
                    queued.update(u for u, _ in frontier)
                    if not frontier:
                        break
                if self.stop_event.is_set():
                    raise Interrupted
                url_, depth = frontier.popleft()
                if not self._claim(url_, fresh_after, depth):
                    report.add(url_, "seen")    # handled, or being fetched by another crawler
                    continue
                pages += 1
                links = self._crawl_one(url_, report, source=source, target_id=target_id)
                now = self.clock()
                if now - last_progress >= self.progress_every:
                    last_progress = now
                    _log_progress(start, pages, len(frontier), report)
                if depth >= self.max_depth:
                    continue
                new = []
                for link in self._take_links(url_, links, start_host, report):
                    if link not in queued:
                        queued.add(link)
                        frontier.append((link, depth + 1))
                        new.append(link)
                self._queue(new, depth + 1)
        except Interrupted:
            report.counts["interrupted"] += 1
        if frontier and pages >= self.max_pages:
            log.info("page limit %d reached; %d URLs left unvisited", self.max_pages, len(frontier))
            report.counts["left_unvisited"] += len(frontier)
        _log_progress(start, pages, len(frontier), report, done=True)
        return report

    def _crawl_one(self, url: str, report: CrawlReport, *, source: str, target_id: int | None) -> list[str]:
        """Fetch, extract, store and record one URL; returns the links to follow."""
        with self.store.session(read_only=True) as s:
            stored = frontier.validators(s, url)  # a stored page is re-fetched conditionally
        try:
            resp = self.fetcher.fetch(url, stored)
        except FetchFailed as f:
            doc_id = None
            if f.status == UrlStatus.SKIPPED:  # the content itself was refused: a document row says why
                doc_id = self.ingestor.refuse(url, f.reason, source=source, target_id=target_id).document_id
            if f.http_status in (404, 410):  # gone from its site: its document is deleted
                with self.store.session() as s:
                    gone = frontier.forget_page(s, url, reason=f"removed from its site ({f.reason})")
                if gone:
                    report.add(url, "deleted", f.reason)
            self._record(url, f.status, http_status=f.http_status, reason=f.reason, document_id=doc_id)
            report.add(url, f.status, f.reason)
            return []
        if resp.status == 304:  # not modified: nothing is read, stored or changed
            with self.store.session() as s:
                frontier.mark_unchanged(s, url)
            log.debug("unchanged (304) %s", url)
            report.add(url, "unchanged")
            return []
        final = resp.url
        try:
            text, encoding, links, noindex = self._extract(resp)
        except Refused as r:
            res = self.ingestor.refuse(final, r.reason, source=source, size_bytes=len(resp.body), target_id=target_id)
            self._record(url, UrlStatus.SKIPPED, http_status=resp.status, reason=r.reason,
                         document_id=res.document_id, also=final)
            report.add(final, UrlStatus.SKIPPED, r.reason, len(resp.body))
            return []
        if noindex:
            reason = "robots meta tag says noindex"
            self._record(url, UrlStatus.SKIPPED, http_status=resp.status, reason=reason, also=final)
            report.add(final, UrlStatus.SKIPPED, reason, len(resp.body))
            return links
        res = self.ingestor.ingest_text(final, text, source=source, encoding=encoding,
                                        target_id=target_id, size_bytes=len(resp.body))
        status = _URL_STATUS_OF[res.outcome]
        self._record(url, status, http_status=resp.status, reason=res.reason, document_id=res.document_id,
                     also=final, validators=resp.validators if status == UrlStatus.FETCHED else (None, None))
        report.add(final, status, res.reason, len(resp.body))
        return links

    def _take_links(self, url: str, links: list[str], start_host: str | None,
                    report: CrawlReport) -> list[str]:
        """The links of the page at `url` to follow: on the start host (with stay_on_host),
        the first `max_links` of them in page order. Each link taken costs a frontier row,
        so a page of a million links costs no more than one of `max_links`; the rest are
        counted (links_dropped) and logged."""
        if self.stay_on_host:
            links = [link for link in links if _hostname(link) == start_host]
        dropped = len(links) - self.max_links
        if dropped > 0:
            report.counts["links_dropped"] += dropped
            log.info("%s: took the first %d of its %d links (--max-links), dropped %d",
                     url, self.max_links, len(links), dropped)
            links = links[:self.max_links]
        return links

    def _extract(self, resp: Response) -> tuple[str, str, list[str], bool]:
        """(main text, encoding, links to follow, noindex) of a fetched page; raises Refused."""
        ctype = resp.content_type
        if looks_like_html(ctype, resp.body):
            declared = resp.charset if resp.charset is not None else meta_charset(resp.body)
            # HTML without a usable charset: the configured fallback, else cp1252 (what
            # browsers take for windows-1252 / ISO-8859-1 pages)
            decoded = decode_text(resp.body, declared=declared,
                                  fallback=self.ingestor.fallback_encoding or "cp1252")
            links, noindex = page_links(decoded.text, resp.url)
            text = extract_main_text(decoded.text)
            if not text or not text.strip():
                raise Refused("no main text found in the HTML")
            return text, decoded.encoding, links, noindex
        if ctype.startswith("text/") or not ctype:
            decoded = decode_text(resp.body, declared=resp.charset, fallback=self.ingestor.fallback_encoding)
            return decoded.text, decoded.encoding, [], False
        raise Refused(f"non-text content type {ctype}")

    # the store: what was handled, and the frontier
    def _claim(self, url: str, fresh_after, depth: int) -> bool:
        """Whether this crawler fetches the URL now: not handled for good by an earlier run
        (since `fresh_after` if given; failures and policy outcomes are retried) and not
        being fetched by another crawler of the store (store.frontier.claim_url)."""
        with self.store.session() as s:
            return frontier.claim_url(s, url, self.holder, self.claim_ttl,
                                       fresh_after=fresh_after, depth=depth)

    def _frontier_left(self, start: str, fresh_after, unclaimed: bool = False
                       ) -> list[tuple[str, int]]:
        """URLs of this origin that an earlier crawl (or another crawler) found but did not
        fetch, and (with `fresh_after`) those fetched before it, with their depth."""
        with self.store.session(read_only=True) as s:
            found = frontier.queued_under(s, origin(start), max_depth=self.max_depth,
                                           unclaimed=unclaimed)
            if fresh_after is not None:
                found += frontier.due_under(s, origin(start), max_depth=self.max_depth,
                                             fetched_before=fresh_after)
        return [(u, depth) for u, depth in found if u != start]

    def _queue(self, links: list[str], depth: int) -> None:
        """Persist the frontier, so a crawl that stops early resumes instead of losing it."""
        if links:
            with self.store.session() as s:
                frontier.queue_urls(s, links, depth)

    def _record(self, url: str, status: str, *, http_status: int | None = None, reason: str | None = None,
                document_id: int | None = None, also: str | None = None,
                validators: tuple[str | None, str | None] = (None, None)) -> None:
        """Record the outcome for `url` and, after redirects, for the final URL `also`, with
        the validators of the page stored (none: a later re-fetch is unconditional)."""
        with self.store.session() as s:
            for u in dict.fromkeys([url, also or url]):
                frontier.record_url(s, u, status=status, http_status=http_status, document_id=document_id,
                                     reason=reason, validators=validators)
        log.debug("%s %s%s", status, url, f": {reason}" if reason else "")


def _log_progress(start: str, pages: int, queued: int, report: CrawlReport, done: bool = False) -> None:
    c = report.counts
    log.info("crawl of %s%s: %d pages requested (%d fetched, %d unchanged), %d queued, %d refused "
             "(SSRF guard, robots.txt, policy), %d failed (network, HTTP), %s bytes read",
             start, " done" if done else "", pages, c[UrlStatus.FETCHED], c["unchanged"], queued,
             c[UrlStatus.REFUSED] + c[UrlStatus.DISALLOWED] + c[UrlStatus.SKIPPED],
             c[UrlStatus.FAILED] + c[UrlStatus.ERROR], f"{report.bytes_read:,}")


def _hostname(url: str) -> str | None:
    return urlsplit(url).hostname


# --- targets ----------------------------------------------------------------------------


def _is_url_target(target: str) -> bool:
    return not os.path.isdir(target) and not os.path.isfile(target) and scheme_of(target) in ("http", "https")


def target_kind(target: str) -> str:
    """'folder', 'file' or 'url' for one CLI target; raises CrawlError for anything else,
    and for a URL we never crawl (credentials in it, malformed), so a bad target is a usage
    error before any work starts."""
    if os.path.isdir(target):
        return "folder"
    if os.path.isfile(target):
        return "file"
    if _is_url_target(target):
        try:
            canonical_url(target)
        except Refused as r:
            raise CrawlError(f"cannot crawl {target!r}: {r.reason}", hint="pass a plain http(s) URL") from None
        return "url"
    raise CrawlError(f"{target!r} is neither an existing folder or file nor an http(s) URL",
                     hint="pass a folder, a file, or a URL starting with http:// or https://")


def iter_targets(targets: Iterable[str]) -> Iterator[tuple[str, str]]:
    """('folder' | 'file' | 'url', target) for each CLI target; raises CrawlError (target_kind)."""
    for t in targets:
        yield target_kind(t), t


def target_location(role: str, target: str) -> str:
    """How a target is stored: a URL canonical (canonical_url), a path absolute; a watched
    root (role TargetKind.WATCH) is always a path. Raises CrawlError for a URL we never crawl."""
    if role == TargetKind.WATCH or not _is_url_target(target):
        return os.path.abspath(target)
    try:
        return canonical_url(target)
    except Refused as r:
        raise CrawlError(f"cannot crawl {target!r}: {r.reason}", hint="pass a plain http(s) URL") from None


def record_target(store: "Store", role: str, target: str, **options) -> int:
    """The crawl_targets row id of `target` as typed (a URL, folder or file), recorded the
    canonical way (target_location), so the same target typed two ways is one row; a known
    target is re-enabled.

    `role` is TargetKind.WATCH (a watched root) or TargetKind.CRAWL. With `options` (limits
    such as max_pages) the row's options become them plus the target's kind ("folder",
    "file" or "url") under "kind"; without, the stored options are kept.
    """
    location = target_location(role, target)
    stored = {"kind": target_kind(target), **options} if options else None
    with store.session() as s:
        row, _ = target_store.add_target(s, role, location, options=stored)
        return row.id


# --------------------------------------------------------------------------- the agent's crawl thread
# The agent's crawl thread: every --crawl target once at start, then the re-crawl schedule.
# 
# `CrawlLoop.run` walks or crawls each target of the start-up plan (folders, files, URLs),
# then, with --recrawl-interval, crawls the URL targets again whenever the first of them is
# due (its last fetch plus the interval, `recrawl_wait`), and crawls the targets users add to
# the store (the dashboard) when they appear; a target removed from the store is not crawled
# again. Between passes it waits on its `wake` event (a new target, or the stop), never
# polling. One target's failure is logged and the next one goes on.
# 
# The crawl of one target is agent/crawler.py's; which targets the agent was given, and the
# thread itself, are the daemon's (agent/daemon.py).

loop_log = logging.getLogger("agent.daemon")   # the agent's lines, as before the split
MIN_RECRAWL_WAIT_S = 60.0  # re-crawl passes start at least this far apart (or the interval)


def recrawl_wait(store, urls: list[str], interval: float) -> float:
    """Seconds until the first of the URL targets is due again (its last fetch + interval),
    never less than min(interval, MIN_RECRAWL_WAIT_S): a target that cannot be fetched does
    not make the re-crawl spin."""
    now = utcnow()
    with store.session(read_only=True) as s:
        last = [frontier.last_fetched(s, canonical_url(u)) or now for u in urls]
    due = min(last) + dt.timedelta(seconds=interval)
    return max((due - now).total_seconds(), min(interval, MIN_RECRAWL_WAIT_S))


def stored_targets(store) -> dict[str, list[str]]:
    """The store's enabled targets by kind (TargetKind.WATCH, TargetKind.CRAWL): where
    they are, as recorded."""
    with store.session(read_only=True) as s:
        return {kind: [t.location for t in list_targets(s, kind)]
                for kind in (TargetKind.WATCH, TargetKind.CRAWL)}


class CrawlLoop:
    """Crawls `plan` (what iter_targets made of cfg.crawl) once, then keeps to the re-crawl
    schedule and the store's new targets until `stop`. `target_ids` maps a target as given
    to its row; `on_crawled` is called after each target and once the start-up pass is
    done (the trainer has news), when `crawled` is set as well."""

    def __init__(self, store, cfg: AgentConfig, plan: list[tuple[str, str]],
                 target_ids: Mapping[str, int], *, stop: threading.Event,
                 crawled: threading.Event, on_crawled: Callable[[], None]) -> None:
        self.store, self.cfg, self.plan, self.target_ids = store, cfg, plan, target_ids
        self.stop, self.crawled, self.on_crawled = stop, crawled, on_crawled
        self.wake = threading.Event()   # a target was added to the store, or the stop
        self.known: set[str] = set()    # crawl targets of the store already crawled

    def notice(self, locations: Iterable[str]) -> None:
        """The store's crawl targets as just read: wake the loop if one is new to it."""
        if set(locations) - self.known:
            self.wake.set()

    def close(self) -> None:
        """End the wait of `run()` (with `stop` set: end it)."""
        self.wake.set()

    def run(self) -> None:
        cfg = self.cfg
        try:
            with Crawler(self.store, allow_private_hosts=cfg.allow_private_hosts,
                         allow_networks=cfg.allow_networks, stop_event=self.stop,
                         max_pages=cfg.max_pages, max_depth=cfg.max_depth, max_links=cfg.max_links,
                         recrawl_interval=cfg.recrawl_interval,
                         follow_symlinks=cfg.follow_symlinks,
                         ingestor=cfg.ingestor(self.store),
                         **cfg.path_filter_args()) as crawler:
                self.known.update(stored_targets(self.store)[TargetKind.CRAWL])
                try:
                    self._crawl(crawler, self.plan)
                finally:
                    self._start_up_done()
                self._recrawl(crawler, [t for kind, t in self.plan if kind == "url"])
        finally:
            self._start_up_done()

    def _start_up_done(self) -> None:
        self.crawled.set()
        self.on_crawled()

    def _recrawl(self, crawler: Crawler, urls: list[str]) -> None:
        """Re-crawl the URL targets when due, and crawl the targets added to the store when
        they appear. Waits on `wake` (a new target, or the stop) until the next due time."""
        interval = self.cfg.recrawl_interval
        urls = list(urls)
        while not self.stop.is_set():
            stored = set(stored_targets(self.store)[TargetKind.CRAWL])
            added = sorted(stored - self.known)
            self.known |= set(added)
            urls = [u for u in urls if u in stored or u in self.cfg.crawl]
            if added:
                plan = []
                for t in added:
                    try:
                        plan += list(iter_targets([t]))
                    except CllmError as e:
                        loop_log.error("cannot crawl the added target %s: %s", t, e.one_line())
                loop_log.info("crawling %d targets added to the store", len(plan))
                self._crawl(crawler, plan)
                urls += [t for kind, t in plan if kind == "url"]
                continue
            wait = recrawl_wait(self.store, urls, interval) if urls and interval > 0 else None
            if wait is not None:
                loop_log.info("next re-crawl of %d URL targets in %.0f s", len(urls), wait)
            if self.wake.wait(wait):
                self.wake.clear()
                continue
            self._crawl(crawler, [("url", u) for u in urls])

    def _crawl(self, crawler: Crawler, plan: list[tuple[str, str]]) -> None:
        for kind, target in plan:
            if self.stop.is_set():
                return
            try:
                tid = self.target_ids.get(target)
                if kind == "url":
                    report = crawler.crawl(target, target_id=tid)
                elif kind == "folder":
                    report = crawler.walk(target, target_id=tid)
                else:
                    one = crawler.ingestor.ingest_file(target, target_id=tid)
                    report = CrawlReport()
                    report.add(one.uri, one.outcome, one.reason, one.size_bytes or 0)
            except (CllmError, StoreError) as e:
                loop_log.error("crawl of %s failed: %s", target, e.one_line())
                continue
            except Exception:   # one bad target never stops the agent (what it stored stays)
                loop_log.exception("crawl of %s failed", target)
                continue
            loop_log.info("crawled %s: %s (%s bytes read)", target, summarize(report.counts),
                     f"{report.bytes_read:,}")
            self.on_crawled()
