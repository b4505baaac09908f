"""The agent daemon: one per data directory. Wires together what watches folders, crawls
targets and keeps the model learning from what arrives, and runs it until a stop.

Threads (all joined on shutdown):
- with `serve`, the HTTP server (agent/server/) and its checkpoint watcher;
- the file monitor's own threads (agent/file_monitor.py), which put MonitorEvents on the
  ingest loop's queue;
- "agent-ingest": IngestLoop (agent/inputs/ingest.py) records them and wakes the trainer;
- "agent-crawl": CrawlLoop (agent/crawler.py) crawls each --crawl target once at
  start, then re-crawls the URL targets when due and crawls the targets users add;
- "agent-trainer": TrainerLoop (agent/training/loop.py) runs cycles while one is due,
  at the training priority (--priority), with the worker spheres it starts;
- "agent-limits" (a trainer with --pause-on-battery or --pause-above-load): LimitMonitor
  (agent/limits.py) pauses training on battery or under load and resumes it.
The main thread waits for the stop event: a signal, --max-cycles, or a failure of any part
(logged with its traceback where it happened, re-raised by `run()`). A stop ends a cycle at
a step boundary (its documents stay pending), and the store is left consistent. What users
set in the store (training paused, watch roots and crawl targets added) is read at start,
at every lease heartbeat, and at once when the server runs in this process. Training is
paused while any reason of `pauses` holds (the user's, the battery's, the load's).

The agent opens its data directory as `cllm train` does (`open_training`, here):
the data-directory lock (`cllm.lock`, agent/datadir.py) keeps a second agent out of the
directory, and the store's trainer lease (agent/training/trainer_lease.py) keeps a second
agent from training the same database from another directory or machine. The loops
themselves live with their concepts; this module only builds, connects, starts and stops
them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional

from agent.continuous_trainer import ContinuousTrainer
from agent.datadir import DataDirLock
from agent.crawler import CrawlLoop, iter_targets, record_target, stored_targets
from agent.file_monitor import FileMonitor, MonitorError
from agent.inputs.ingest import IngestLoop
from agent.limits import USER, LimitMonitor, Pauses
from agent.settings import AgentConfig, TrainerSettings
from agent.training.trainer_lease import LEASE_TTL_S, TrainerLease
from agent.training.loop import TrainerLoop
from agent.web.ssrf import HostPolicy
from engine.errors import CllmError, ConfigError
from store import Store, controls, open_store
from store.models import TargetKind

log = logging.getLogger(__name__)


@contextlib.contextmanager
def open_training(data_dir: Path, settings: TrainerSettings, *,
                  database_url: Optional[str] = None, origin: Optional[str] = None,
                  train: bool = True, stop: Optional[threading.Event] = None,
                  lease_ttl: float = LEASE_TTL_S,
                  on_lease_lost: Optional[Callable[[BaseException], None]] = None,
                  on_beat: Optional[Callable[[Store], None]] = None
                  ) -> Iterator[tuple[Store, Optional[ContinuousTrainer]]]:
    """A data directory opened for training while the block runs, as `cllm agent` and
    `cllm train` both open it: its lock (one of them per directory), its store (documents
    recorded as coming from `origin`, when given) and, with `train`, the store's trainer
    lease held by a ContinuousTrainer that has recovered what a crash left. Yields (store,
    trainer); without `train` (an ingest-only agent) the trainer is None and no lease is
    taken. `on_beat(store)` runs after every lease renewal, `on_lease_lost(error)` when
    another process took the lease over (see TrainerLease)."""
    with DataDirLock(data_dir), open_store(data_dir, database_url) as store:
        if origin:
            store.origin = origin
        if not train:
            yield store, None
            return
        beat = (lambda: on_beat(store)) if on_beat is not None else None
        with TrainerLease(store, data_dir, ttl_s=lease_ttl, on_lost=on_lease_lost,
                          on_beat=beat) as lease:
            trainer = ContinuousTrainer(store, data_dir, settings, stop=stop)
            trainer.lease = lease
            trainer.recover()
            yield store, trainer


class Agent:
    """Wires the monitor, the ingest, crawl and trainer loops and the server; `run()` blocks
    until `stop` is set (by a signal, the caller or a failure) and everything is joined."""

    def __init__(self, cfg: AgentConfig, stop: Optional[threading.Event] = None,
                 serve=None) -> None:
        self.cfg = cfg
        self.serve = serve                   # a ServeConfig: run `cllm serve` inside the agent
        self.server = None
        self.serving = threading.Event()     # set once the server listens (server.url)
        self.stop = stop or threading.Event()
        self.wake = threading.Event()        # news for the trainer: a document, a beat
        self.arrivals = threading.Event()    # a watched file was added: new text goes first
        self.errors: list[BaseException] = []
        self.target_ids: dict[str, int] = {}
        # set once the start-up crawl has passed over every target: until then the token
        # trigger waits (the first cycle takes the whole crawl, not its first few files);
        # the age trigger (--max-wait) still applies
        self.crawled = threading.Event()
        # training paused by a user (a row of the store: the dashboard, the API); read at
        # start, at every lease heartbeat, and at once when the server runs in this process
        self.paused = threading.Event()
        # why (agent/limits.py): the user's pause, the battery's, the load's; each change
        # wakes the trainer and rings its bell (a rest between duty-cycled steps ends)
        self.pauses = Pauses(self.paused)
        self.pauses.listeners.append(self._nudge)
        self.bell = threading.Event()
        self.limits: Optional[LimitMonitor] = None   # a trainer's battery and load checks
        self.monitor: Optional[FileMonitor] = None   # the file monitor, once a folder is watched
        self.ingest_loop: Optional[IngestLoop] = None
        self.crawl_loop: Optional[CrawlLoop] = None
        self.trainer_loop: Optional[TrainerLoop] = None
        self._plan: list[tuple[str, str]] = []       # what iter_targets made of cfg.crawl
        self._controls_lock = threading.Lock()
        self._watch_known: Optional[set[str]] = None   # watch roots in the store at start

    @property
    def cycles_completed(self) -> int:
        return self.trainer_loop.cycles_completed if self.trainer_loop is not None else 0

    def run(self) -> None:
        cfg = self.cfg
        if cfg.role == "train" and (cfg.watch or cfg.crawl):
            raise ConfigError("--role train learns what other agents record: it neither "
                              "watches nor crawls",
                              "give --watch/--crawl to an agent with --role ingest or all")
        for w in cfg.watch:
            if not Path(w).is_dir():
                raise ConfigError(f"cannot watch {w}: not a folder", "create it or fix --watch")
        self._plan = list(iter_targets(cfg.crawl))   # a bad target is a one-line error, now
        if cfg.crawl:
            try:                                # ... and so is a bad --allow-network
                HostPolicy.build(cfg.allow_private_hosts, cfg.allow_networks)
            except ValueError as e:
                raise CllmError(str(e), "use CIDR, e.g. --allow-network 10.1.0.0/16") from None
        cfg.ingestor(None)                      # ... and so is an unknown fallback encoding
        # no lease for --role ingest: any number of ingest agents; for a trainer, the lease's
        # heartbeat also wakes it, so documents other agents (other processes, other
        # machines) record reach it within a third of the lease's time
        with open_training(cfg.data_dir, cfg.trainer, database_url=cfg.database_url,
                           origin=cfg.machine, train=cfg.role != "ingest", stop=self.stop,
                           lease_ttl=cfg.lease_ttl, on_lease_lost=self._failed,
                           on_beat=self._controls) as (store, trainer):
            self._run_agent(store, trainer)
        if self.errors:
            raise self.errors[0]

    def _failed(self, e: BaseException) -> None:
        """A part of the agent failed (a thread of its own, the file monitor's, the
        server's, or the lease was lost; each has logged it): stop, and let run() raise it."""
        self.errors.append(e)
        self.stop.set()

    def _guard(self, fn) -> None:
        try:
            fn()
        except BaseException as e:  # a failed thread stops the agent and is re-raised by run()
            log.exception("%s failed", threading.current_thread().name)
            self._failed(e)

    def _controls(self, store) -> None:
        """Read what users set in the store: training paused or not, targets added. Then
        wake the trainer (it also looks for documents other agents recorded). A heartbeat
        before the loops are built does nothing: _run_agent reads them once it has."""
        if self.ingest_loop is None:
            return
        with store.session(read_only=True) as s:
            paused = controls.paused(s)
        targets = stored_targets(store)
        if self.cfg.role != "train" and not self.stop.is_set():
            with self._controls_lock:
                self._follow_watch_roots(targets[TargetKind.WATCH])
        if paused:
            self.pauses.set(USER, "paused by a user (the dashboard or POST /api/training)")
        else:
            self.pauses.clear(USER)
        if self.crawl_loop is not None:
            self.crawl_loop.notice(targets[TargetKind.CRAWL])
        self.wake.set()

    def _follow_watch_roots(self, roots: list[str]) -> None:
        """Watch the folders users added to the store as watch roots; stop watching removed
        ones (their documents stay)."""
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
            self._start_monitor([first])
            log.info("watching %s (a root added to the store)", first)
        for r in sorted(added - set(self.monitor.roots)):
            try:
                if self.monitor.add_root(r):
                    log.info("watching %s (a root added to the store)", r)
            except MonitorError as e:
                log.error("cannot watch the added root %s: %s", r, e.one_line())

    def _start_monitor(self, roots: list[str]) -> None:
        """The file monitor over `roots`, feeding the ingest loop (under _controls_lock)."""
        cfg = self.cfg
        self.monitor = FileMonitor(roots, self.ingest_loop.events, quiet_period=cfg.quiet_period,
                                   polling=cfg.polling, follow_symlinks=cfg.follow_symlinks,
                                   on_failure=self._failed, **cfg.path_filter_args())
        self.monitor.start()

    def _run_agent(self, store, trainer: Optional[ContinuousTrainer]) -> None:
        """The agent's threads; without a trainer (--role ingest) there is no trainer loop."""
        cfg = self.cfg
        if trainer is not None:             # --passes may differ from the runs before
            trainer.follow_budget()
        self.target_ids = self._record_targets(store)
        self.ingest_loop = IngestLoop(cfg.ingestor(store), self.stop, self._arrived)
        if cfg.role != "train":             # also for targets users add to the store later
            self.crawl_loop = CrawlLoop(store, cfg, self._plan, self.target_ids,
                                        stop=self.stop, crawled=self.crawled,
                                        on_crawled=self.wake.set)
        else:
            self.crawled.set()
        self._controls(store)                # what users set: paused, roots already known
        if trainer is not None:
            trainer.arrivals = self.arrivals
            trainer.paused = self.paused
            trainer.bell = self.bell
            state = trainer.load_latest()
            log.info("agent on %s: model step %s, vocabulary %s", cfg.data_dir, state.step,
                     len(state.tokenizer))
            self.trainer_loop = TrainerLoop(trainer, stop=self.stop, wake=self.wake,
                                            crawled=self.crawled, max_cycles=cfg.max_cycles,
                                            pauses=self.pauses)
            if cfg.pause_on_battery or cfg.pause_above_load is not None:
                self.limits = LimitMonitor(self.pauses, on_battery=cfg.pause_on_battery,
                                           above_load=cfg.pause_above_load,
                                           interval=cfg.limits_interval,
                                           root=Path(cfg.system_root))
        else:
            log.info("agent on %s: ingest only (as %s); the store's trainer learns what it "
                     "records", cfg.data_dir, store.origin)
        loops = [("agent-ingest", self.ingest_loop), ("agent-trainer", self.trainer_loop),
                 ("agent-crawl", self.crawl_loop)]
        threads = [threading.Thread(target=self._guard, args=(loop.run,), name=name)
                   for name, loop in loops if loop is not None]
        try:
            if self.serve is not None:
                self._start_server(store, trainer)
            if cfg.watch:
                with self._controls_lock:
                    self._start_monitor(list(cfg.watch))
            if self.limits is not None:
                self.limits.start()
            for t in threads:
                t.start()
            log.info("agent running (pid %s); watching %s", os.getpid(),
                     ", ".join(cfg.watch) or "nothing")
            self.stop.wait()                    # a signal, --max-cycles, or a failed thread
        finally:
            self._shut_down(threads)

    def _arrived(self) -> None:
        """A watched file became a new document: a backlog cycle ends at its next step."""
        self.arrivals.set()
        self._nudge()

    def _nudge(self) -> None:
        """News for the trainer (an arrival, a pause or resume, a stop): end its wait for a
        cycle and the rest between duty-cycled steps."""
        self.wake.set()
        self.bell.set()

    def _shut_down(self, threads: list[threading.Thread]) -> None:
        """Stop everything the agent started and join every thread."""
        self.stop.set()
        self._nudge()
        if self.limits is not None:
            self.limits.close()
        if self.crawl_loop is not None:
            self.crawl_loop.close()
        with self._controls_lock:
            monitor, self.monitor = self.monitor, None
        if monitor is not None:
            try:
                monitor.stop()
            except CllmError as e:
                log.error("%s", e.one_line())
        self.ingest_loop.close()
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
        from agent.server.app import Server, Service   # the optional [serve] extra

        service = Service(store, self.cfg.data_dir, self.serve)
        service.control_listeners.append(lambda: self._controls(store))
        self.server = Server(service, watch=trainer is None, on_failure=self._failed)
        if trainer is not None:
            trainer.checkpoint_listeners.append(self.server.notify)
        self.server.start()
        log.info("serving on %s; dashboard: %s; %s", self.server.url,
                 self.server.dashboard_url, self.server.token_hint())
        self.serving.set()

    def _record_targets(self, store) -> dict[str, int]:
        """Watched roots and crawl targets as rows of the store, recorded the canonical way
        (the same target typed two ways is one row; a known one is re-enabled)."""
        ids = {}
        for kind, items in ((TargetKind.WATCH, self.cfg.watch), (TargetKind.CRAWL, self.cfg.crawl)):
            for t in items:
                ids[t] = record_target(store, kind, t)
        return ids
