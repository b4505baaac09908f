"""The agent daemon: one per data directory. Watches folders, crawls targets, and keeps the
model learning from what arrives.

Threads (all joined on shutdown):
- with `serve`, the HTTP server (agent/server/) and its checkpoint watcher;
- the file monitor's own threads, which put MonitorEvents into `events`;
- "ingest": takes events off the queue, writes documents through the Ingestor, wakes the
  trainer;
- "crawl": walks / crawls each --crawl target once at start, then re-crawls the URL targets
  whenever they are due (--recrawl-interval; it waits on the stop event until then);
- "trainer": waits (on an Event, with the age trigger's timeout) until a cycle is due,
  then runs it through the ContinuousTrainer.
The main thread takes SIGINT/SIGTERM and waits for the stop event. A stop ends a cycle at
a step boundary (its documents stay pending), and the store is left consistent.

The data-directory lock (`cllm.lock`, an flock the kernel drops when the process dies)
keeps a second agent out of the directory; it records the running agent's pid for `cllm
status`. The store's trainer lease (agent/training/trainer_lease.py) keeps a second agent from training the
same database from another directory or machine.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from collections import Counter
from pathlib import Path
from typing import Optional

from agent.datadir import DataDirLock
from agent.continuous_trainer import ContinuousTrainer, CycleInterrupted
from agent.training.trainer_lease import TrainerLease
from agent.settings import AgentConfig
from engine.errors import CllmError, ConfigError
from store import open_store
from store.errors import LeaseLostError, StoreError

log = logging.getLogger(__name__)
RETRY_S = 5.0      # wait after a failed cycle before trying again
MIN_RECRAWL_WAIT_S = 60.0  # re-crawl passes start at least this far apart (or the interval)
_STOP = object()


def recrawl_wait(store, urls: list[str], interval: float) -> float:
    """Seconds until the first of the URL targets is due again (its last fetch + interval),
    never less than min(interval, MIN_RECRAWL_WAIT_S): a target that cannot be fetched does
    not make the re-crawl spin."""
    import datetime as dt

    from agent.web.urls import canonical_url
    from store import frontier
    from store.models import utcnow

    now = utcnow()
    with store.session(read_only=True) as s:
        last = [frontier.last_fetched(s, canonical_url(u)) or now for u in urls]
    due = min(last) + dt.timedelta(seconds=interval)
    return max((due - now).total_seconds(), min(interval, MIN_RECRAWL_WAIT_S))


class Agent:
    """Wires the monitor, the ingest and crawl threads and the trainer; `run()` blocks until
    `stop` is set (by a signal or the caller) and everything has been joined."""

    def __init__(self, cfg: AgentConfig, stop: Optional[threading.Event] = None,
                 serve=None) -> None:
        self.cfg = cfg
        self.serve = serve                   # a ServeConfig: run `cllm serve` inside the agent
        self.server = None
        self.serving = threading.Event()     # set once the server listens (server.url)
        self.stop = stop or threading.Event()
        self.wake = threading.Event()
        self.arrivals = threading.Event()    # a watched file was added: new text goes first
        self.events: queue.Queue = queue.Queue()
        self.errors: list[BaseException] = []
        self.cycles_completed = 0
        self.target_ids: dict[str, int] = {}
        # set once the start-up crawl has passed over every target: until then the token
        # trigger waits (the first cycle takes the whole crawl, not its first few files);
        # the age trigger (--max-wait) still applies
        self.crawled = threading.Event()
        # training paused by a user (a row of the store: the dashboard, the API); read at
        # start, at every lease heartbeat, and at once when the server runs in this process
        self.paused = threading.Event()
        self.crawl_wake = threading.Event()  # a crawl target was added to the store
        self.monitor = None                  # the file monitor, once a folder is watched
        self._controls_lock = threading.Lock()
        self._watch_known: Optional[set[str]] = None   # watch roots in the store at start
        self._crawl_targets_known: set[str] = set()

    def run(self) -> None:
        cfg = self.cfg
        if cfg.role == "train" and (cfg.watch or cfg.crawl):
            raise ConfigError("--role train learns what other agents record: it neither "
                              "watches nor crawls",
                              "give --watch/--crawl to an agent with --role ingest or all")
        for w in cfg.watch:
            if not Path(w).is_dir():
                raise ConfigError(f"cannot watch {w}: not a folder", "create it or fix --watch")
        if cfg.crawl:
            from agent.crawler import iter_targets

            from agent.web.ssrf import HostPolicy

            list(iter_targets(cfg.crawl))       # a bad target is a one-line error, now
            try:                                # ... and so is a bad --allow-network
                HostPolicy.build(cfg.allow_private_hosts, cfg.allow_networks)
            except ValueError as e:
                raise CllmError(str(e), "use CIDR, e.g. --allow-network 10.1.0.0/16") from None
        cfg.ingestor(None)                      # ... and so is an unknown fallback encoding
        with DataDirLock(cfg.data_dir):
            store = open_store(cfg.data_dir, cfg.database_url)
            if cfg.machine:
                store.origin = cfg.machine      # what the documents it records say they came from
            try:
                self._run(store)
            finally:
                store.close()
        if self.errors:
            raise self.errors[0]

    def _run(self, store) -> None:
        if self.cfg.role == "ingest":           # no lease: any number of ingest agents
            self._run_agent(store, None)
            return
        # the heartbeat also wakes the trainer: documents other agents (other processes,
        # other machines) record reach it within a third of the lease's time
        with TrainerLease(store, self.cfg.data_dir, ttl_s=self.cfg.lease_ttl,
                          on_lost=self._lease_lost, on_beat=lambda: self._controls(store)) as lease:
            self._run_agent(store, lease)

    def _controls(self, store) -> None:
        """Read what users set in the store: training paused or not, crawl targets added.
        Then wake the trainer (it also looks for documents other agents recorded)."""
        from store import controls
        from store.models import TargetKind
        from store.targets import list_targets

        with store.session(read_only=True) as s:
            paused = controls.paused(s)
            crawl = [t.location for t in list_targets(s, TargetKind.CRAWL)]
            watch = [t.location for t in list_targets(s, TargetKind.WATCH)]
        if self.cfg.role != "train" and not self.stop.is_set():
            with self._controls_lock:
                self._follow_watch_roots(watch)
        if paused != self.paused.is_set():
            log.info("training %s (a control of the store)", "paused" if paused else "resumed")
            (self.paused.set if paused else self.paused.clear)()
        if self.cfg.role != "train" and set(crawl) - self._crawl_targets_known:
            self.crawl_wake.set()
        self.wake.set()

    def _lease_lost(self, e: BaseException) -> None:
        self.errors.append(e)
        self.stop.set()

    def _follow_watch_roots(self, roots: list[str]) -> None:
        """Watch the folders users added to the store as watch roots; stop watching removed
        ones (their documents stay)."""
        from agent.file_monitor import FileMonitor, MonitorError

        stored = {os.path.abspath(r) for r in roots}
        if self._watch_known is None:         # at start: the roots given to this run count
            self._watch_known = stored
            return
        added = stored - self._watch_known
        self._watch_known |= added
        watched = set(self.monitor.roots) if self.monitor is not None else set()
        for r in sorted(watched - stored):    # removed from the store: stop watching
            if len(self.monitor.roots) > 1:
                self.monitor.remove_root(r)
                self._watch_known.discard(r)
        if not added:
            return
        if self.monitor is None:
            first = sorted(added)[0]
            self.monitor = FileMonitor([first], self.events, quiet_period=self.cfg.quiet_period,
                                       polling=self.cfg.polling,
                                       follow_symlinks=self.cfg.follow_symlinks,
                                       on_failure=self._monitor_failed,
                                       **self.cfg.path_filter_args())
            self.monitor.start()
            log.info("watching %s (a root added to the store)", first)
        for r in sorted(added - set(self.monitor.roots)):
            try:
                if self.monitor.add_root(r):
                    log.info("watching %s (a root added to the store)", r)
            except MonitorError as e:
                log.error("cannot watch the added root %s: %s", r, e.one_line())

    def _run_agent(self, store, lease: Optional[TrainerLease]) -> None:
        """The agent's threads; without a lease (--role ingest) there is no trainer."""
        cfg = self.cfg
        self.target_ids = self._record_targets(store)
        self._controls(store)                # what users set: paused, roots already known
        trainer = None
        threads = [threading.Thread(target=self._guard, args=(self._ingest_loop, store),
                                    name="agent-ingest")]
        if lease is not None:
            trainer = ContinuousTrainer(store, cfg.data_dir, cfg.trainer, stop=self.stop)
            trainer.arrivals = self.arrivals
            trainer.paused = self.paused
            trainer.lease = lease
            trainer.recover()
            state = trainer.load_latest()
            log.info("agent on %s: model step %s, vocabulary %s", cfg.data_dir, state.step,
                     len(state.tokenizer))
            threads.append(threading.Thread(target=self._guard, args=(self._trainer_loop, trainer),
                                            name="agent-trainer"))
        else:
            log.info("agent on %s: ingest only (as %s); the store's trainer learns what it "
                     "records", cfg.data_dir, store.origin)
        if cfg.role != "train":             # also for targets users add to the store later
            threads.append(threading.Thread(target=self._guard, args=(self._crawl_all, store),
                                            name="agent-crawl"))
        else:
            self.crawled.set()
        try:
            if self.serve is not None:
                self._start_server(store, trainer)
            if cfg.watch:
                from agent.file_monitor import FileMonitor

                with self._controls_lock:
                    self.monitor = FileMonitor(cfg.watch, self.events,
                                               quiet_period=cfg.quiet_period,
                                               polling=cfg.polling,
                                               follow_symlinks=cfg.follow_symlinks,
                                               on_failure=self._monitor_failed,
                                               **cfg.path_filter_args())
                    self.monitor.start()
            for t in threads:
                t.start()
            log.info("agent running (pid %s); watching %s", os.getpid(), ", ".join(cfg.watch) or "nothing")
            self.stop.wait()                    # a signal, --max-cycles, or a failed thread
        finally:
            self.stop.set()
            self.wake.set()
            self.crawl_wake.set()
            with self._controls_lock:
                monitor, self.monitor = self.monitor, None
            if monitor is not None:
                try:
                    monitor.stop()
                except CllmError as e:
                    log.error("%s", e.one_line())
            self.events.put(_STOP)
            for t in threads:
                if t.ident is not None:
                    t.join()
            if self.server is not None:
                try:
                    self.server.stop()           # uvicorn and the checkpoint watcher, joined
                except BaseException as e:
                    if e not in self.errors:
                        self.errors.append(e)
            log.info("agent stopped")

    def _start_server(self, store, trainer: Optional[ContinuousTrainer]) -> None:
        """The HTTP server on its own thread, over the agent's store; it reloads on the
        trainer's in-process event after each commit (no file watching; an ingest-only
        agent's server watches the checkpoints folder as `cllm serve` does)."""
        from agent.server.app import Server, Service

        service = Service(store, self.cfg.data_dir, self.serve)
        service.control_listeners.append(lambda: self._controls(store))
        self.server = Server(service, watch=trainer is None, on_failure=self._server_failed)
        if trainer is not None:
            trainer.checkpoint_listeners.append(self.server.notify)
        self.server.start()
        log.info("serving on %s", self.server.url)
        self.serving.set()

    def _server_failed(self, e: BaseException) -> None:
        """The server thread died (it has logged the traceback): stop the agent, and let
        run() raise the failure."""
        self.errors.append(e)
        self.stop.set()

    def _record_targets(self, store) -> dict[str, int]:
        """Watched roots and crawl targets as rows of the store, recorded the canonical way
        (the same target typed two ways is one row; a known one is re-enabled)."""
        from agent.crawler import record_target
        from store.models import TargetKind

        ids = {}
        for kind, items in ((TargetKind.WATCH, self.cfg.watch), (TargetKind.CRAWL, self.cfg.crawl)):
            for t in items:
                ids[t] = record_target(store, kind, t)
        return ids

    def _monitor_failed(self, e: BaseException) -> None:
        """A file-monitor thread died (it has logged the traceback): stop the agent, and
        let run() raise it."""
        self.errors.append(e)
        self.stop.set()

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as e:  # a failed thread stops the agent and is re-raised by run()
            log.exception("%s failed", threading.current_thread().name)
            self.errors.append(e)
            self.stop.set()

    def _ingest_loop(self, store) -> None:
        from store import StoreError

        from agent.inputs.ingest import summarize

        ingestor = self.cfg.ingestor(store)
        batch: Counter = Counter()     # outcomes since the queue was last empty: one log line
        while True:
            ev = self.events.get()
            if ev is _STOP or self.stop.is_set():
                return      # events not handled yet: the next start's reconciliation scan
            while True:
                try:
                    res = ingestor.handle(ev)
                except StoreError as e:     # e.g. the database stayed locked: keep the event
                    log.error("could not record %s (%s); retrying in %.0f s", ev.path,
                              e.one_line(), RETRY_S)
                    if self.stop.wait(RETRY_S):
                        return
                    continue
                except Exception as e:      # a bug: log it, the next start's scan retries
                    log.error("could not ingest %s: %s", ev.path,
                              e.one_line() if isinstance(e, CllmError) else repr(e))
                    res = None
                break
            if res is not None and res.outcome in ("added", "restored"):
                self.arrivals.set()     # a backlog cycle ends at its next step for it
                self.wake.set()
            if res is not None and res.outcome != "ignored":
                batch[res.outcome] += 1
            if batch and self.events.empty():
                log.info("watched files: %s", summarize(batch))
                batch.clear()

    def _crawl_all(self, store) -> None:
        """Every --crawl target once; then, with --recrawl-interval, the URL targets again
        whenever they are due (a wait on the stop event until the next due time)."""
        from agent.crawler import Crawler, iter_targets

        cfg = self.cfg
        try:
            with Crawler(store, allow_private_hosts=cfg.allow_private_hosts,
                         allow_networks=cfg.allow_networks, stop_event=self.stop,
                         max_pages=cfg.max_pages, max_depth=cfg.max_depth,
                         recrawl_interval=cfg.recrawl_interval,
                         follow_symlinks=cfg.follow_symlinks, ingestor=cfg.ingestor(store),
                         **cfg.path_filter_args()) as crawler:
                plan = list(iter_targets(cfg.crawl))
                self._crawl_targets_known.update(self._stored_crawl_targets(store))
                try:
                    self._crawl_targets(crawler, plan)
                finally:
                    self.crawled.set()
                    self.wake.set()
                self._recrawl(store, crawler, [t for kind, t in plan if kind == "url"])
        finally:
            self.crawled.set()
            self.wake.set()

    def _stored_crawl_targets(self, store) -> set[str]:
        from store.models import TargetKind
        from store.targets import list_targets

        with store.session(read_only=True) as s:
            return {t.location for t in list_targets(s, TargetKind.CRAWL)}

    def _recrawl(self, store, crawler, urls: list[str]) -> None:
        """Re-crawl the URL targets when due, and crawl the targets users add to the store
        (the dashboard) when they appear; a removed target is not crawled again. Waits on
        `crawl_wake` (a new target, or the stop) until the next due time."""
        from agent.crawler import iter_targets

        interval = self.cfg.recrawl_interval
        urls = list(urls)
        while not self.stop.is_set():
            stored = self._stored_crawl_targets(store)
            added = sorted(stored - self._crawl_targets_known)
            self._crawl_targets_known |= set(added)
            urls = [u for u in urls if u in stored or u in self.cfg.crawl]
            if added:
                plan = []
                for t in added:
                    try:
                        plan += list(iter_targets([t]))
                    except CllmError as e:
                        log.error("cannot crawl the added target %s: %s", t, e.one_line())
                log.info("crawling %d targets added to the store", len(plan))
                self._crawl_targets(crawler, plan)
                urls += [t for kind, t in plan if kind == "url"]
                continue
            wait = recrawl_wait(store, urls, interval) if urls and interval > 0 else None
            if wait is not None:
                log.info("next re-crawl of %d URL targets in %.0f s", len(urls), wait)
            if self.crawl_wake.wait(wait):
                self.crawl_wake.clear()
                continue
            self._crawl_targets(crawler, [("url", u) for u in urls])

    def _crawl_targets(self, crawler, plan: list[tuple[str, str]]) -> None:
        from agent.crawler import CrawlReport
        from agent.inputs.ingest import summarize

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
            self.wake.set()

    def _trainer_loop(self, trainer: ContinuousTrainer) -> None:
        """Cycles back to back while a backlog remains; blocked (no CPU) when none does."""
        learned_since_idle = 0
        while not self.stop.is_set():
            self.wake.clear()
            try:
                if self.paused.is_set():        # a user paused training: wait for resume
                    self.wake.wait()
                    continue
                trigger, wait = trainer.due(tokens_trigger=self.crawled.is_set())
                if trigger is None:
                    if learned_since_idle:
                        log.info("backlog learned: every document trained to %s passes (%d "
                                 "cycles); waiting for new text", trainer.settings.passes,
                                 learned_since_idle)
                        learned_since_idle = 0
                    self.wake.wait(wait)        # an ingest, a stop, or the age trigger
                    continue
                rep = trainer.run_pending(trigger)
            except CycleInterrupted:
                return
            except LeaseLostError:
                raise                           # another agent trains now: stop this one
            except (CllmError, StoreError) as e:  # e.g. the store was locked too long
                log.error("cycle failed: %s", e.one_line())
                self.stop.wait(RETRY_S)         # back off before retrying the same documents
                continue
            if rep is not None:
                self.cycles_completed += 1
                learned_since_idle += 1
                log.info("cycle %s completed: %s documents, %s replayed, loss %.3f -> %.3f, "
                         "checkpoint %s", rep.cycle_id, len(rep.doc_ids), len(rep.replay_ids),
                         rep.run.loss_start or float("nan"), rep.run.loss_end or float("nan"),
                         rep.checkpoint_path)
                if self.cfg.max_cycles is not None and self.cycles_completed >= self.cfg.max_cycles:
                    log.info("%d cycles completed (--max-cycles): stopping", self.cycles_completed)
                    self.stop.set()

