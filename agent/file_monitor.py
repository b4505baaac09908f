"""Watched folders: watchdog observers whose events become "this file is ready" messages.

One watchdog observer per root (inotify on Linux; a polling observer when asked, or when
the inotify watch/instance limits are hit, with a warning that says so). Its handler only
filters paths and forwards them into a queue. A debounce thread owns all state: a file is
ready once no event has arrived for `quiet_period` seconds, its inode, size and mtime have
not changed since the last event, and (with inotify, which reports closes) no writer still
has it open. Editor saves (temp file + rename) therefore give one message, moves are a
delete plus a create, and a path that is gone when its quiet period ends is a delete. A
path that changes type is both: a folder in place of a file says `folder` (the file's rows
go, the folder is scanned), a file in place of a folder is a delete of the folder first.
On start, and after an observer has died and been restarted, a scanner thread walks each
root so changes made while nobody watched are found (the `reconciled` message lets the
ingestor mark the files that vanished). The debounce thread also notices a dead observer
and restarts it.

Messages (MonitorEvent) go into the caller's queue; the monitor reads no file contents and
never touches the store. What the filter's private rules refuse (credentials, the agent's own
data directory: paths.PrivateRules) is reported as refused once for the file or folder the
rule names; events below a private folder, and every event inside the data directory (the
agent's own checkpoints would start a cycle each), are dropped unseen. Symlinks are not
followed by default (they are reported as refused); with `follow_symlinks=True` linked
folders are walked and watched, and loops are reported instead of followed.
"""
from __future__ import annotations

import errno
import heapq
import logging
import os
import queue
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from watchdog.events import (
    DirCreatedEvent, DirDeletedEvent, DirModifiedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
    FileDeletedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from agent.inputs.events import EventKind, MonitorEvent
from agent.inputs.paths import PathFilter, is_folder, walk_files
from engine.errors import CllmError

log = logging.getLogger(__name__)

_EVENT_FILTER = [FileCreatedEvent, FileModifiedEvent, FileDeletedEvent, FileMovedEvent,
                 FileClosedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent]
_INOTIFY_LIMIT_ERRNOS = {errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
_STOP = object()


class MonitorError(CllmError):
    """A watched folder cannot be watched, or a monitor thread failed."""


def _native_observer(timeout: float) -> BaseObserver:
    """The platform's native observer (inotify on Linux); tests replace this."""
    return Observer(timeout=timeout)


class _Forwarder(FileSystemEventHandler):
    """Runs on watchdog's dispatcher thread: filters and forwards, nothing else."""

    def __init__(self, root: str, path_filter: PathFilter, raw: queue.Queue,
                 alias: tuple[str, str] | None = None) -> None:
        self.root, self.filter, self.raw, self.alias = root, path_filter, raw, alias
        self.own_rels = path_filter.private.own_rels(root)   # the data directory, if inside

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            kind = event.event_type
            if kind == "moved":
                self._forward("gone-dir" if event.is_directory else "gone", event.src_path,
                              event.is_directory)
                self._forward("dir" if event.is_directory else "touch", event.dest_path, event.is_directory)
            elif kind == "deleted":
                self._forward("gone-dir" if event.is_directory else "gone", event.src_path,
                              event.is_directory)
            elif kind == "created":
                self._forward("dir" if event.is_directory else "touch", event.src_path, event.is_directory)
            elif kind == "modified" and not event.is_directory:
                self._forward("write", event.src_path, False)
            elif kind == "modified":  # polling observers only (see _schedule)
                self._forward("dir-modified", event.src_path, True)
            elif kind == "closed":
                self._forward("closed", event.src_path, False)
        except Exception:  # never let a bad path kill the dispatcher thread
            log.exception("file monitor: cannot forward %r", event)

    def _forward(self, kind: str, path, is_dir: bool) -> None:
        path = os.fsdecode(path)
        if not path:
            return
        if self.alias is not None:  # a watch on a symlinked folder's target
            real, link = self.alias
            if path != real and not path.startswith(real + os.sep):
                return
            path = link + path[len(real):]
        rel = os.path.relpath(path, self.root)
        if rel == ".":
            if kind in ("gone", "gone-dir"):  # the root itself was deleted or moved away
                self.raw.put((kind, path, self.root, time.monotonic()))
            return
        if rel.startswith(".." + os.sep) or rel == "..":
            return
        rel = rel.replace(os.sep, "/")
        if any(o == "." or rel == o or rel.startswith(o + "/") for o in self.own_rels):
            return                  # the agent's own writes (the scan recorded the folder)
        if is_dir:
            if self.filter.excluded(rel, is_dir=True):
                return
        elif not self.filter.accepts(rel):
            return
        private = self.filter.private
        if private.matches(path, is_dir) and private.matches(os.path.dirname(path), True):
            return                  # below a private folder: the folder itself is refused
        self.raw.put((kind, path, self.root, time.monotonic()))


@dataclass
class _Pending:
    root: str
    deadline: float
    snap: tuple | None = None  # (inode, size, mtime_ns) at the last event
    writing_since: float | None = None  # a write seen and no close yet (inotify only)
    from_scan: bool = False  # found by a scan, not by an event
    was_dir: bool = False  # a folder at this path went away (what is there now may be a file)
    seq: int = 0


@dataclass
class _Watch:
    root: str
    observer: BaseObserver | None = None
    polling: bool = False
    aliases: set = field(default_factory=set)  # (real folder, link path) pairs
    missing_logged: bool = False


class FileMonitor:
    """Watches folders and puts MonitorEvents into `out_queue`.

    Usage: `with FileMonitor([root], q, quiet_period=1.0): ...` or `start()` / `stop()`.
    `stop()` joins every thread it started and re-raises a failure of one of them;
    `check()` does the same without stopping.
    """

    def __init__(self, roots: Iterable[str | os.PathLike], out_queue: "queue.Queue[MonitorEvent]", *,
                 quiet_period: float = 1.0, include: Iterable[str] | None = None,
                 exclude: Iterable[str] | None = None, polling: bool = False,
                 follow_symlinks: bool = False, reconcile: bool = True, poll_interval: float = 1.0,
                 open_write_timeout: float = 30.0, health_interval: float = 1.0,
                 on_failure: Callable[[BaseException], None] | None = None,
                 own_dirs: Iterable[str | os.PathLike] = ()) -> None:
        self.roots = [os.path.abspath(r) for r in roots]
        self.on_failure = on_failure  # called (from the failing thread) when a thread dies
        if not self.roots:
            raise MonitorError("no folder to watch", hint="pass at least one folder")
        for r in self.roots:
            if not os.path.isdir(r):
                raise MonitorError(f"cannot watch {r}: not a folder", hint="create it or fix the path")
        if quiet_period < 0:
            raise ValueError("quiet_period must be >= 0")
        self.out = out_queue
        self.quiet_period = quiet_period
        self.filter = PathFilter(include, exclude, own_dirs=own_dirs)  # own_dirs: never read
        self.polling = polling
        self.follow_symlinks = follow_symlinks
        self.reconcile = reconcile
        self.poll_interval = poll_interval
        self.open_write_timeout = open_write_timeout
        self.health_interval = health_interval
        self.restarts = 0  # observers restarted after dying (for status and tests)
        self._watches = {r: _Watch(r) for r in self.roots}
        self._raw: queue.Queue = queue.Queue()
        self._scans: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards _watches' observers and aliases
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._pending: dict[str, _Pending] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0

    # lifecycle
    def start(self) -> "FileMonitor":
        if self._threads:
            raise RuntimeError("FileMonitor already started")
        try:
            for w in self._watches.values():
                self._start_observer(w)
        except BaseException:
            for w in self._watches.values():
                if w.observer is not None:
                    _stop_observer(w.observer)
                    w.observer = None
            raise
        self._threads = [threading.Thread(target=self._guard, args=(self._debounce_loop,),
                                          name="file-monitor-debounce", daemon=True),
                         threading.Thread(target=self._guard, args=(self._scan_loop,),
                                          name="file-monitor-scan", daemon=True)]
        for t in self._threads:
            t.start()
        if self.reconcile:
            for r in self.roots:
                self._scans.put((r, r, True))
        return self

    def add_root(self, root: str | os.PathLike) -> bool:
        """Watch one more folder while running (a root added to the store): its observer,
        then a reconciliation scan. False if it is watched already."""
        root = os.path.abspath(root)
        with self._lock:
            if root in self._watches:
                return False
        w = _Watch(root)
        self._start_observer(w)              # raises MonitorError if it is not a folder
        with self._lock:
            self._watches[root] = w
            self.roots.append(root)
        if self.reconcile:
            self._scans.put((root, root, True))
        return True

    def remove_root(self, root: str | os.PathLike) -> bool:
        """Stop watching a folder (a root removed from the store); its documents stay."""
        root = os.path.abspath(root)
        with self._lock:
            w = self._watches.pop(root, None)
            if w is None:
                return False
            self.roots.remove(root)
            obs, w.observer = w.observer, None
        if obs is not None:
            _stop_observer(obs)
        log.info("stopped watching %s", root)
        return True

    def stop(self) -> None:
        """Stop observers and threads, join them all; re-raise a thread's failure."""
        self._stopping.set()
        with self._lock:
            observers = [w.observer for w in self._watches.values() if w.observer is not None]
            for w in self._watches.values():
                w.observer = None
        for obs in observers:
            _stop_observer(obs)
        self._raw.put(_STOP)
        self._scans.put(_STOP)
        for t in self._threads:
            t.join()
        self.check()

    def __enter__(self) -> "FileMonitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def check(self) -> None:
        """Raise MonitorError if one of the monitor's threads has failed."""
        if self._errors:
            raise MonitorError(f"file monitor thread failed: {self._errors[0]!r}",
                               hint="see the log for the traceback") from self._errors[0]

    def observer_kind(self, root: str) -> str:
        """'native' or 'polling': what watches `root` now."""
        return "polling" if self._watches[os.path.abspath(root)].polling else "native"

    def _guard(self, fn) -> None:
        try:
            fn()
        except BaseException as e:  # surfaces through check()/stop(), never lost
            log.exception("file monitor: %s failed", threading.current_thread().name)
            self._errors.append(e)
            if self.on_failure is not None:
                self.on_failure(e)
            self.out.put(MonitorEvent(EventKind.ERROR, "", "", reason=f"file monitor failed: {e!r}"))

    # observers
    def _start_observer(self, w: _Watch) -> None:
        """Start an observer for one root (native, else polling); raises if the root is gone."""
        if not os.path.isdir(w.root):
            raise MonitorError(f"cannot watch {w.root}: not a folder")
        obs: BaseObserver | None = None
        if not (self.polling or w.polling):
            try:
                obs = _native_observer(self.poll_interval)
                self._schedule(obs, w)
                obs.start()
            except OSError as e:
                if obs is not None:
                    _stop_observer(obs)
                obs = None
                if e.errno not in _INOTIFY_LIMIT_ERRNOS:
                    raise
                log.warning("inotify limit reached watching %s (%s): falling back to a polling "
                            "observer (every %.1f s); raise fs.inotify.max_user_watches / "
                            "max_user_instances to watch natively", w.root, e, self.poll_interval)
                w.polling = True
        if obs is None:
            obs = PollingObserver(timeout=self.poll_interval)
            self._schedule(obs, w)
            obs.start()
            if self.polling:
                log.info("watching %s with a polling observer (every %.1f s)", w.root, self.poll_interval)
            w.polling = True
        with self._lock:
            w.observer = obs
        log.info("watching %s", w.root)

    def _schedule(self, obs: BaseObserver, w: _Watch) -> None:
        # A polling observer reports a folder replaced by a file that got the folder's inode
        # as the folder modified (watchdog compares by inode): those events tell us too.
        kinds = _EVENT_FILTER + [DirModifiedEvent] if isinstance(obs, PollingObserver) else _EVENT_FILTER
        obs.schedule(_Forwarder(w.root, self.filter, self._raw), w.root, recursive=True,
                     event_filter=kinds)
        for real, link in sorted(w.aliases):
            if os.path.isdir(real):
                obs.schedule(_Forwarder(w.root, self.filter, self._raw, alias=(real, link)), real,
                             recursive=True, event_filter=kinds)

    def _add_alias(self, root: str, link: str, real: str) -> None:
        """With follow_symlinks: also watch a linked folder's target (outside the root)."""
        w = self._watches[root]
        real = os.path.realpath(real)
        if real == root or real.startswith(root + os.sep) or (real, link) in w.aliases:
            return
        with self._lock:
            w.aliases.add((real, link))
            obs = w.observer
            if obs is not None:
                obs.schedule(_Forwarder(root, self.filter, self._raw, alias=(real, link)), real,
                             recursive=True, event_filter=_EVENT_FILTER)

    def _check_health(self) -> None:
        with self._lock:                     # roots come and go while running
            watches = list(self._watches.values())
        for w in watches:
            if self._stopping.is_set():
                return
            obs = w.observer
            if obs is not None and obs.is_alive() and all(e.is_alive() for e in list(obs.emitters)):
                continue
            if obs is not None:
                log.error("file monitor: the observer for %s died; restarting it and rescanning", w.root)
                with self._lock:
                    w.observer = None
                _stop_observer(obs)
            try:
                self._start_observer(w)
            except OSError as e:
                log.error("file monitor: cannot restart the observer for %s: %s", w.root, e)
                continue
            except MonitorError:
                if not w.missing_logged:
                    log.warning("file monitor: %s is gone; watching resumes when it comes back", w.root)
                    w.missing_logged = True
                continue
            w.missing_logged = False
            self.restarts += 1
            self._scans.put((w.root, w.root, True))

    # the scanner thread
    def _scan_loop(self) -> None:
        while True:
            item = self._scans.get()
            if item is _STOP or self._stopping.is_set():
                return
            root, top, full = item
            present: set[str] = set()
            rel_top = os.path.relpath(top, root)
            top_filter = self.filter
            for it in walk_files(top, _Prefixed(top_filter, "" if rel_top == "." else rel_top),
                                 follow_symlinks=self.follow_symlinks, stop_event=self._stopping,
                                 on_linked_folder=(lambda link, real, r=root: self._add_alias(r, link, real))
                                 if self.follow_symlinks else None):
                if it.reason is not None:
                    self.out.put(MonitorEvent(EventKind.REFUSED, it.path, root, reason=it.reason))
                    present.add(it.path)    # seen: the reconciliation keeps its refusal
                    continue
                present.add(it.path)
                self._raw.put(("scan", it.path, root, time.monotonic()))
            if self._stopping.is_set():
                return
            if full:
                self.out.put(MonitorEvent(EventKind.RECONCILED, root, root, present=frozenset(present)))
                log.info("scanned %s: %d files", root, len(present))

    # the debounce thread
    def _debounce_loop(self) -> None:
        next_health = time.monotonic() + self.health_interval
        while not self._stopping.is_set():
            now = time.monotonic()
            wait = next_health - now
            if self._heap:
                wait = min(wait, self._heap[0][0] - now)
            try:
                item = self._raw.get(timeout=max(0.0, wait))
                while item is not _STOP:
                    self._on_raw(*item)
                    item = self._raw.get_nowait()
            except queue.Empty:
                pass
            if self._stopping.is_set():
                return
            self._fire_due(time.monotonic())
            if time.monotonic() >= next_health:
                self._check_health()
                next_health = time.monotonic() + self.health_interval

    def _on_raw(self, kind: str, path: str, root: str, at: float) -> None:
        watch = self._watches.get(root)
        if watch is None:                    # a root removed while its events were queued
            return
        if kind == "dir-modified":
            if is_folder(path):
                return  # a folder's contents changed: its files have events of their own
            kind = "gone-dir"  # the folder is gone, and perhaps a file is in its place
        p = self._pending.get(path)
        if p is None:
            p = self._pending[path] = _Pending(root, 0.0, from_scan=(kind == "scan"))
        elif kind != "scan":
            p.from_scan = False
        if kind == "write" and not watch.polling:
            p.writing_since = p.writing_since or at
        elif kind == "closed":
            p.writing_since = None
        elif kind == "gone-dir":
            p.was_dir = True
        p.snap = _snapshot(path)
        self._arm(path, p, time.monotonic() + self.quiet_period)

    def _arm(self, path: str, p: _Pending, deadline: float) -> None:
        self._seq += 1
        p.deadline, p.seq = deadline, self._seq
        heapq.heappush(self._heap, (deadline, p.seq, path))

    def _fire_due(self, now: float) -> None:
        due = []
        while self._heap and self._heap[0][0] <= now:
            _, seq, path = heapq.heappop(self._heap)
            p = self._pending.get(path)
            if p is not None and p.seq == seq:
                due.append((path, p))
        # deletions first, so a move's delete is applied before its create
        due.sort(key=lambda item: os.path.lexists(item[0]))
        for path, p in due:
            try:
                self._settle(path, p, now)
            except Exception:
                log.exception("file monitor: cannot settle %s", path)
                self._pending.pop(path, None)

    def _settle(self, path: str, p: _Pending, now: float) -> None:
        """The quiet period of `path` is over: decide what it is."""
        def emit(kind: str, reason: str | None = None) -> None:
            self._pending.pop(path, None)
            self.out.put(MonitorEvent(kind, path, p.root, reason=reason, follow_symlinks=self.follow_symlinks))

        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):  # gone, or a folder above it is now a file
            if p.from_scan:
                self._pending.pop(path, None)
            else:
                emit(EventKind.DELETED)
            return
        except OSError as e:
            emit(EventKind.REFUSED, f"cannot stat: {e.strerror or e}")
            return
        if p.was_dir:  # a folder was here: unless one is again, its files are gone
            p.was_dir = False
            if not (stat.S_ISDIR(st.st_mode) or (self.follow_symlinks and os.path.isdir(path))):
                self.out.put(MonitorEvent(EventKind.DELETED, path, p.root,
                                          reason="its folder was replaced by a file",
                                          follow_symlinks=self.follow_symlinks))
        why = self.filter.private.reason(path, is_dir=stat.S_ISDIR(st.st_mode))
        if why:                 # credentials, or the data directory: recorded, never read
            emit(EventKind.REFUSED, why)
            return
        if stat.S_ISLNK(st.st_mode):
            if not self.follow_symlinks:
                emit(EventKind.REFUSED, "symbolic link (not followed)")
                return
            try:
                st = os.stat(path)
            except OSError as e:
                emit(EventKind.REFUSED, "symlink loop (too many levels of symbolic links)"
                     if e.errno == errno.ELOOP else "dangling symbolic link")
                return
        if stat.S_ISDIR(st.st_mode):  # a folder appeared (created, moved or linked in): scan it
            if os.path.islink(path):
                real = os.path.realpath(path)
                if path.startswith(real + os.sep):
                    emit(EventKind.REFUSED, "symlink loop (points to a folder above it)")
                    return
                if real == p.root or real.startswith(p.root + os.sep):
                    emit(EventKind.REFUSED, "symbolic link to a folder already watched (not followed twice)")
                    return
                self._add_alias(p.root, path, real)
            emit(EventKind.FOLDER)  # before its files: a file that was at `path` is gone
            self._scans.put((p.root, path, False))
            return
        if not stat.S_ISREG(st.st_mode):
            emit(EventKind.REFUSED, "not a regular file")
            return
        snap = (st.st_ino, st.st_size, st.st_mtime_ns)
        if snap != p.snap:  # changed without an event: wait for it to settle
            p.snap = snap
            self._arm(path, p, now + self.quiet_period)
            return
        if p.writing_since is not None and now - p.writing_since < self.open_write_timeout:
            self._arm(path, p, now + self.quiet_period)  # still open for writing
            return
        emit(EventKind.READY)


class _Prefixed(PathFilter):
    """A PathFilter for a walk that starts below the root: paths get the folder's prefix."""

    def __init__(self, inner: PathFilter, prefix: str) -> None:  # noqa: D107 (no super init)
        self.inner, self.prefix = inner, prefix.replace(os.sep, "/")
        self.private = inner.private

    def _full(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def excluded(self, rel: str, is_dir: bool = False) -> bool:
        return self.inner.excluded(self._full(rel), is_dir)

    def accepts(self, rel: str) -> bool:
        return self.inner.accepts(self._full(rel))


def _snapshot(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _stop_observer(obs: BaseObserver) -> None:
    try:
        obs.stop()
    except Exception:
        log.debug("stopping an observer failed", exc_info=True)
    if obs.is_alive():
        obs.join()
