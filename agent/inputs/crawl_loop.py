"""The agent's crawl thread: every --crawl target once at start, then the re-crawl schedule.

`CrawlLoop.run` walks or crawls each target of the start-up plan (folders, files, URLs),
then, with --recrawl-interval, crawls the URL targets again whenever the first of them is
due (its last fetch plus the interval, `recrawl_wait`), and crawls the targets users add to
the store (the dashboard) when they appear; a target removed from the store is not crawled
again. Between passes it waits on its `wake` event (a new target, or the stop), never
polling. One target's failure is logged and the next one goes on.

The crawl of one target is agent/crawler.py's; which targets the agent was given, and the
thread itself, are the daemon's (agent/daemon.py).
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Callable, Iterable, Mapping

from agent.crawler import CrawlReport, Crawler, iter_targets
from agent.inputs.ingest import summarize
from agent.settings import AgentConfig
from agent.web.urls import canonical_url
from engine.errors import CllmError
from store import frontier
from store.errors import StoreError
from store.models import TargetKind, utcnow
from store.targets import list_targets

log = logging.getLogger("agent.daemon")   # the agent's lines, as before the split
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
                         max_pages=cfg.max_pages, max_depth=cfg.max_depth,
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
                        log.error("cannot crawl the added target %s: %s", t, e.one_line())
                log.info("crawling %d targets added to the store", len(plan))
                self._crawl(crawler, plan)
                urls += [t for kind, t in plan if kind == "url"]
                continue
            wait = recrawl_wait(self.store, urls, interval) if urls and interval > 0 else None
            if wait is not None:
                log.info("next re-crawl of %d URL targets in %.0f s", len(urls), wait)
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
                log.error("crawl of %s failed: %s", target, e.one_line())
                continue
            except Exception:   # one bad target never stops the agent (what it stored stays)
                log.exception("crawl of %s failed", target)
                continue
            log.info("crawled %s: %s (%s bytes read)", target, summarize(report.counts),
                     f"{report.bytes_read:,}")
            self.on_crawled()
