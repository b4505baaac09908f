"""The Ingestor: files, fetched text and monitor events in; documents or recorded refusals out.

Holds `Ingestor`, which reads and decodes an input (text.py), and records what it became
through the store's functions in short transactions of its own (or one per batch of inputs
during a folder walk), and `IngestResult`, what one input became. The lifecycle rules (a new
version supersedes the pending one, returning content revives its row, duplicates and
their hand-over when the original goes) are the store's: store.documents.record_text and
mark_deleted_under. What the Ingestor adds is what needs the file system: whether a
duplicate that could inherit deleted content still exists, and which files a scan missed.

Also holds `IngestLoop`, the agent's ingest thread: the file monitor's events taken off
its queue in order and handed to an Ingestor, an event the store refused (locked) kept and
retried.

It does not watch folders (file_monitor.py), choose files (paths.py), fetch URLs
(crawler.py) or write SQL, and it never raises for a bad input: every refused input becomes
a row with its reason. Sessions and ORM objects stay inside one call, so an Ingestor
belongs to one thread at a time (the agent's ingest thread, or the CLI).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping

from agent.inputs.events import EventKind, MonitorEvent
from agent.inputs.paths import PrivateRules, file_uri, is_folder, uri_to_path
from agent.inputs.text import (DEFAULT_MAX_FILE_BYTES, Refused, codec_problem, decode_text,
                               key_material, read_file, storable, utf8_problem)
from engine.errors import CllmError, ConfigError
from store import documents
from store.documents import Outcome
from store.errors import StoreError

__all__ = ["BATCH_INPUTS", "IngestLoop", "IngestResult", "Ingestor", "summarize"]

if TYPE_CHECKING:  # pragma: no cover
    from store import Store

log = logging.getLogger(__name__)
agent_log = logging.getLogger("agent.daemon")   # IngestLoop's lines, as before the split

RETRY_S = 5.0       # IngestLoop: wait before retrying an event the store could not record
BATCH_INPUTS = 200  # inputs per transaction in Ingestor.batch (a folder walk)
REMOVED = "removed from its source"
REPLACED_BY_FOLDER = "replaced by a folder"


@dataclass(frozen=True)
class IngestResult:
    """What one input became: `outcome` is an Outcome (added, unchanged, restored,
    duplicate, refused, deleted, ignored); `reason` says why for refusals and duplicates."""

    uri: str
    outcome: str
    document_id: int | None = None
    sha256: str | None = None
    reason: str | None = None
    size_bytes: int | None = None
    n_deleted: int = 0


def summarize(counts: Mapping[str, int]) -> str:
    """Outcome counts as the one log line of a walk or a batch says them, most first:
    "24 added, 3 unchanged" ("nothing" when empty). Each input's own line is at DEBUG."""
    ranked = sorted(((n, str(k)) for k, n in counts.items() if n), key=lambda t: (-t[0], t[1]))
    return ", ".join(f"{n} {k}" for n, k in ranked) or "nothing"


def _source(source: str) -> str:
    """A source name the store takes: storable, and within its 255 characters."""
    return storable(source)[:255]


class Ingestor:
    """Writes documents and refusals through the store; one thread at a time.

    `handle(event)` takes the file monitor's events; `ingest_file`, `ingest_text` and
    `refuse` serve the crawler and the CLI. No method raises for a bad input.

    Every file read passes `private` first (credentials, the agent's own data directory:
    paths.PrivateRules; the default has no data directory, so callers with one pass it),
    and every text, a page's too, the key-material check: each refusal is recorded.
    """

    def __init__(self, store: "Store", *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 fallback_encoding: str | None = None, follow_symlinks: bool = False,
                 private: PrivateRules | None = None) -> None:
        if max_file_bytes <= 0:
            raise ValueError("max_file_bytes must be positive")
        problem = None if fallback_encoding is None else codec_problem(fallback_encoding)
        if problem:
            raise ConfigError(problem, hint="use a Python text codec name such as cp1252 or latin-1")
        self.store = store
        self.max_file_bytes = max_file_bytes
        self.fallback_encoding = fallback_encoding
        self.follow_symlinks = follow_symlinks
        self.private = private if private is not None else _default_private()
        self._batch: _Batch | None = None

    @contextlib.contextmanager
    def batch(self, every: int = BATCH_INPUTS) -> Iterator[None]:
        """Group the calls inside into transactions of up to `every` inputs (much faster for
        walks of many small files). An error rolls back the open transaction and propagates."""
        if self._batch is not None:
            yield
            return
        self._batch = _Batch(self.store, every)
        try:
            yield
        except BaseException as e:
            self._batch.close(e)
            raise
        else:
            self._batch.close(None)
        finally:
            self._batch = None

    @contextlib.contextmanager
    def _tx(self):
        """The batch's session if a batch is open, else a short transaction of its own."""
        if self._batch is None:
            with self.store.session() as s:
                yield s
            return
        yield self._batch.session()
        self._batch.done_one()

    # events from the file monitor
    def handle(self, event) -> IngestResult | None:
        """Apply one `file_monitor.MonitorEvent`; returns what it became."""
        source = event.root
        if event.kind == EventKind.READY:
            return self.ingest_file(event.path, source=source, root=event.root,
                                    follow_symlinks=event.follow_symlinks)
        if event.kind == EventKind.DELETED:
            return self.delete_path(event.path, reason=event.reason or REMOVED)
        if event.kind == EventKind.FOLDER:  # the files under it come as their own events
            return self.delete_path(event.path, below=False, reason=REPLACED_BY_FOLDER)
        if event.kind == EventKind.REFUSED:
            return self.refuse(file_uri(event.path), event.reason or "refused", source=source)
        if event.kind == EventKind.ERROR:  # the monitor itself failed; FileMonitor.check() raises it
            log.error("file monitor failed: %s", event.reason)
            return None
        if event.kind == EventKind.RECONCILED:
            n = self.reconcile(event.path, event.present or frozenset())
            return IngestResult(file_uri(event.path), Outcome.DELETED if n else Outcome.IGNORED, n_deleted=n)
        log.warning("unknown monitor event kind %r for %s", event.kind, event.path)
        return None

    # files
    def ingest_file(self, path: str | os.PathLike, *, source: str | None = None,
                    target_id: int | None = None, follow_symlinks: bool | None = None,
                    root: str | os.PathLike | None = None) -> IngestResult:
        """Read, decode and store one file (source defaults to its folder). Unless symlinks
        are followed, the file is opened beneath `root` (the watched or walked folder it was
        found in; default its own folder) through no symbolic link: text.open_regular."""
        path = os.path.abspath(path)
        uri = file_uri(path)
        source = source or os.path.dirname(path)
        follow = self.follow_symlinks if follow_symlinks is None else follow_symlinks
        why = self.private.reason(path)
        if why:
            return self.refuse(uri, why, source=source, target_id=target_id)
        try:
            data = read_file(path, max_bytes=self.max_file_bytes, follow_symlinks=follow, root=root)
            decoded = decode_text(data, fallback=self.fallback_encoding)
        except Refused as r:
            return self.refuse(uri, r.reason, source=source, size_bytes=r.size_bytes, target_id=target_id)
        return self.ingest_text(uri, decoded.text, source=source, encoding=decoded.encoding,
                                target_id=target_id, size_bytes=len(data))

    def ingest_text(self, uri: str, text: str, *, source: str, encoding: str = "utf-8",
                    target_id: int | None = None, size_bytes: int | None = None) -> IngestResult:
        """Store decoded text as a pending document, deduplicated by content
        (store.documents.record_text has the rules)."""
        if not text.strip():
            return self.refuse(uri, "empty (whitespace only)", source=source, target_id=target_id)
        problem = (utf8_problem(text) or key_material(text)
                   or ("binary content (NUL character)" if "\0" in text else None))
        if problem:
            return self.refuse(uri, problem, source=source, size_bytes=size_bytes, target_id=target_id)
        uri, source = storable(uri), _source(source)
        with self._tx() as s:
            rec = documents.record_text(s, uri=uri, source=source, text=text, encoding=encoding,
                                        target_id=target_id, size_bytes=size_bytes)
        # the line names the version (size and hash): benchmarks/fault_campaign.py waits for it
        log.debug("%s: %s (sha256 %s%s)%s", rec.outcome, uri, (rec.sha256 or "")[:12],
                  "" if size_bytes is None else f", {size_bytes} bytes",
                  f": {rec.reason}" if rec.reason else "")
        self._hand_over(rec.heirs)      # the superseded version's content, still in a duplicate
        return IngestResult(uri, rec.outcome, rec.document_id, rec.sha256, rec.reason, size_bytes)

    def refuse(self, uri: str, reason: str, *, source: str, size_bytes: int | None = None,
               target_id: int | None = None) -> IngestResult:
        """Record a refused input (status skipped) with its reason. A uri refused again
        updates its refusal, so restart scans do not pile up rows."""
        uri, reason, source = storable(uri), storable(reason), _source(source)
        with self._tx() as s:
            doc_id = documents.record_refused(s, uri=uri, source=source, reason=reason,
                                              size_bytes=size_bytes, target_id=target_id).id
        log.debug("refused %s: %s", uri, reason)
        return IngestResult(uri, Outcome.REFUSED, doc_id, None, reason, size_bytes)

    def delete_path(self, path: str | os.PathLike, *, below: bool = True,
                    reason: str = REMOVED) -> IngestResult:
        """Mark the file's rows, or every row under a deleted folder, as deleted (with
        `below=False` only the rows at `path` itself: a folder took the file's place).

        A file that duplicated the deleted content and still exists takes the content over.
        """
        uri = file_uri(path)
        with self._tx() as s:
            deleted = documents.mark_deleted_under(s, uri, reason=reason, below=below)
        self._hand_over(deleted.heirs)
        if deleted.n_rows:
            log.debug("deleted: %s (%d rows): %s", uri, deleted.n_rows, reason)
        return IngestResult(uri, Outcome.DELETED if deleted.n_rows else Outcome.IGNORED,
                            n_deleted=deleted.n_rows)

    def reconcile(self, root: str | os.PathLike, present: Iterable[str]) -> int:
        """After a scan of `root`: rows of files that are gone (not seen, not on disk, or a
        folder now) are marked deleted, and so are rows of files inside a folder the private
        rules refuse (the data directory, ~/.ssh: learned before the rules did), never to be
        trained or replayed again. Returns how many rows changed."""
        seen = {file_uri(p) for p in present}
        with self._tx() as s:
            live = documents.live_uris_under(s, file_uri(root))
        n = 0
        for uri in sorted(live - seen):
            path = uri_to_path(uri)
            if not path:
                continue
            if is_folder(path):    # a folder took the file's place: its files were scanned
                n += self.delete_path(path, below=False, reason=REPLACED_BY_FOLDER).n_deleted
            elif not os.path.lexists(path):
                n += self.delete_path(path).n_deleted
            elif why := self.private.reason(path):
                n += self.delete_path(path, below=False, reason=why).n_deleted
        return n

    def _hand_over(self, heirs: Iterable[str]) -> None:
        """Duplicates of content that is live nowhere now: the first whose file still
        exists takes it over (ingesting it revives the content's row under its uri)."""
        for heir in heirs:
            heir_path = uri_to_path(heir)
            if heir_path and os.path.lexists(heir_path) and self._still_duplicate(heir):
                self.ingest_file(heir_path)

    def _still_duplicate(self, uri: str) -> bool:
        with self._tx() as s:
            return documents.is_duplicate(s, uri)


class IngestLoop:
    """The agent's ingest thread: `run()` takes MonitorEvents off `events` (the file
    monitor's queue) until `close()` or `stop`, and records each through `ingestor`.

    A StoreError (the database stayed locked) keeps the event and retries it every RETRY_S
    until the stop; any other failure is logged and the event dropped (the next start's
    reconciliation scan finds the file again). `on_arrival` is called after a document was
    added or restored, so the trainer learns it first. Outcomes are logged as one line
    whenever the queue runs empty."""

    def __init__(self, ingestor: Ingestor, stop: threading.Event,
                 on_arrival: Callable[[], None]) -> None:
        self.ingestor, self.stop, self.on_arrival = ingestor, stop, on_arrival
        self.events: "queue.Queue[MonitorEvent | object]" = queue.Queue()

    def close(self) -> None:
        """End `run()` once the events before this call are taken."""
        self.events.put(_CLOSE)

    def run(self) -> None:
        batch: Counter = Counter()     # outcomes since the queue was last empty: one log line
        while True:
            ev = self.events.get()
            if ev is _CLOSE or self.stop.is_set():
                return      # events not handled yet: the next start's reconciliation scan
            res = self._handle(ev)
            if res is None:
                if self.stop.is_set():
                    return
            elif res.outcome in (Outcome.ADDED, Outcome.RESTORED):
                self.on_arrival()       # a backlog cycle ends at its next step for it
            if res is not None and res.outcome != Outcome.IGNORED:
                batch[res.outcome] += 1
            if batch and self.events.empty():
                agent_log.info("watched files: %s", summarize(batch))
                batch.clear()

    def _handle(self, ev: MonitorEvent) -> IngestResult | None:
        """The event recorded; None when it failed (logged) or the stop came first."""
        while True:
            try:
                return self.ingestor.handle(ev)
            except StoreError as e:     # e.g. the database stayed locked: keep the event
                agent_log.error("could not record %s (%s); retrying in %.0f s", ev.path,
                                e.one_line(), RETRY_S)
                if self.stop.wait(RETRY_S):
                    return None
            except Exception as e:      # a bug: log it, the next start's scan retries
                agent_log.error("could not ingest %s: %s", ev.path,
                                e.one_line() if isinstance(e, CllmError) else repr(e))
                return None


_CLOSE = object()    # IngestLoop.close(): the end of its queue


@functools.lru_cache(maxsize=1)
def _default_private() -> PrivateRules:
    """The private rules of an Ingestor given none: the patterns, no data directory."""
    return PrivateRules()


class _Batch:
    """A transaction shared by many inputs, committed every `every` of them."""

    def __init__(self, store: "Store", every: int) -> None:
        self.store, self.every, self.n = store, max(1, every), 0
        self._cm = None
        self._session = None

    def session(self):
        if self._cm is None:
            self._cm = self.store.session()
            self._session = self._cm.__enter__()
        return self._session

    def done_one(self) -> None:
        self.n += 1
        if self.n % self.every == 0:
            self.close(None)

    def close(self, error: BaseException | None) -> None:
        cm, self._cm, self._session = self._cm, None, None
        if cm is None:
            return
        if error is None:
            cm.__exit__(None, None, None)
        else:
            cm.__exit__(type(error), error, error.__traceback__)
