"""The trainer lease, held while a process trains: the single-trainer rule lives in the store
(store/lease.py), not in a data directory's lock file, so two agents pointed at one database
from two data directories (or two machines) cannot both train it.

`TrainerLease` takes the lease on enter (AgentLocked when a live holder has it), renews it
from a heartbeat thread every `ttl_s / 3` seconds (a wait on its stop event, joined on exit)
and releases it on exit. If a renewal finds the lease taken over (this process stalled
longer than the expiry), `on_lost` is called; the commit of every cycle checks the lease in
its own transaction as well (`fence`), so a process that lost it never records training.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Optional

from engine.errors import CllmError
from store import lease as store_lease
from store.errors import LeaseHeldError, LeaseLostError, StoreError

log = logging.getLogger(__name__)
LEASE_TTL_S = 30.0


class AgentLocked(CllmError):
    """Another agent already runs on this data directory or trains this store."""


class TrainerLease:
    def __init__(self, store, data_dir: Optional[Path] = None, ttl_s: float = LEASE_TTL_S,
                 on_lost: Optional[Callable[[BaseException], None]] = None,
                 on_beat: Optional[Callable[[], None]] = None) -> None:
        self.store = store
        self.data_dir = str(data_dir) if data_dir is not None else None
        self.ttl_s = ttl_s
        self.on_lost = on_lost
        self.on_beat = on_beat            # after each renewal (the agent wakes its trainer)
        self.holder = store_lease.new_holder_id()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lost: Optional[LeaseLostError] = None

    def __enter__(self) -> "TrainerLease":
        try:
            with self.store.session() as s:
                store_lease.acquire(s, self.holder, self.ttl_s, data_dir=self.data_dir)
        except LeaseHeldError as e:
            raise AgentLocked(str(e), e.hint) from None
        self._thread = threading.Thread(target=self._beat, name="trainer-lease")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            with self.store.session() as s:
                store_lease.release(s, self.holder)
        except StoreError as e:     # the lease expires by itself
            log.warning("could not release the trainer lease: %s", e.one_line())

    def fence(self, session) -> None:
        """Raise LeaseLostError inside `session` unless this process still holds the lease."""
        store_lease.holds(session, self.holder)

    def _beat(self) -> None:
        interval = self.ttl_s / 3
        while not self._stop.wait(interval):
            try:
                with self.store.session() as s:
                    store_lease.renew(s, self.holder, self.ttl_s)
            except LeaseLostError as e:
                self.lost = e
                log.error("%s", e.one_line())
                if self.on_lost is not None:
                    self.on_lost(e)
                return
            except StoreError as e:     # e.g. the database locked for a moment: next beat
                log.warning("could not renew the trainer lease: %s", e.one_line())
                continue
            if self.on_beat is not None:
                self.on_beat()
