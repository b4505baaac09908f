"""The watcher's messages: what agent/file_monitor.py sends and the agent's ingest thread
(agent/inputs/ingest.py, IngestLoop) turns into documents, refusals and deletions."""
from __future__ import annotations

import enum
from dataclasses import dataclass


class EventKind(enum.StrEnum):
    """What a MonitorEvent says about its path."""
    READY = "ready"            # a stable file to ingest
    DELETED = "deleted"        # a file or folder is gone
    FOLDER = "folder"          # a folder is at `path` (its files come as their own events), so
                               # a file at that very path is gone (the path changed type)
    REFUSED = "refused"        # not a file we read; `reason` says why
    RECONCILED = "reconciled"  # a scan of `root` finished: `present` holds every file it saw,
                               # so rows of any other file under it may be gone
    ERROR = "error"            # a monitor thread failed; FileMonitor.check() raises it


@dataclass(frozen=True)
class MonitorEvent:
    """One message for the ingestor; `kind` is an EventKind."""

    kind: str
    path: str
    root: str
    reason: str | None = None
    present: frozenset[str] | None = None
    follow_symlinks: bool = False
