"""The checkpoint a server holds in memory, and the watcher that reloads it.

`ModelHolder` owns the loaded checkpoint (swapped as one reference, so a generation that
started keeps the model it started with). `CheckpointWatcher` is one thread that waits on an
event: a watchdog observer on the checkpoints folder sets it when a checkpoint file, the
trainer's commit marker or the live snapshot's sidecar (agent/training/model_state.py)
changes, and `notify()` sets it from inside the agent's process. On each wake-up the thread
asks the store which checkpoint is the latest (and whether the live snapshot belongs to the
cycle after it: agent/generation/checkpoint.py) and loads it if it is not the one held: the
store decides, the files only wake it up.
No polling: the thread blocks on the event until something happens or it is stopped.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Optional

from agent.generation.checkpoint import (DECODE_WEIGHTS, ServingCheckpoint,
                                         load_serving_checkpoint, serving_key)
from agent.server.wake import WakeThread
from agent.training.model_state import CKPT_RE, COMMIT_MARKER, LIVE_SIDECAR, checkpoint_dir
from engine.errors import CllmError

log = logging.getLogger(__name__)


class ModelHolder:
    """The served checkpoint: None until one loads; `cycle` pins one cycle's checkpoint;
    `committed` serves committed checkpoints only (no live snapshots)."""

    def __init__(self, store, data_dir: Path, cycle: Optional[int] = None,
                 weights: str = DECODE_WEIGHTS, committed: bool = False) -> None:
        self.store, self.data_dir, self.cycle, self.weights = store, Path(data_dir), cycle, weights
        self.committed = committed
        self.current: Optional[ServingCheckpoint] = None
        self.error: Optional[str] = None        # why nothing is loaded (for /health)
        self.loads = 0                          # checkpoints loaded so far
        self._lock = threading.Lock()
        self.listeners: list[Callable[[ServingCheckpoint], None]] = []

    def reload(self) -> bool:
        """Load the store's latest checkpoint (or the live snapshot of the cycle after it)
        unless it is the one held; True if it changed. A pinned cycle loads once."""
        with self._lock:
            cur = self.current
            if cur is not None:
                if self.cycle is not None:
                    return False
                key = serving_key(self.store, self.data_dir, self.committed)
                if key is None or key == cur.key:
                    return False
            try:
                new = load_serving_checkpoint(self.store, self.data_dir, self.cycle,
                                              self.weights, self.committed)
            except CllmError as e:
                self.error = e.one_line()
                log.warning("cannot serve a checkpoint: %s", self.error)
                return False
            if new is None:
                self.error = "no checkpoint yet: the agent has not finished a cycle"
                return False
            if cur is not None and new.key == cur.key:
                return False
            self.current, self.error = new, None
            self.loads += 1
        log.info("serving %s %s (cycle %s, step %s)",
                 "live snapshot" if new.live else "checkpoint", new.path, new.cycle, new.step)
        for fn in list(self.listeners):
            try:
                fn(new)
            except Exception:
                log.exception("checkpoint listener failed")
        return True


class CheckpointWatcher(WakeThread):
    """Reload `holder` whenever the checkpoints folder says something was committed.

    start() loads the first checkpoint on the watcher's thread (a server answers 503 on
    /health meanwhile) and starts a watchdog observer; stop() ends both and joins them.
    A failure in the thread is kept in `failure` and logged with its traceback."""

    name = "cllm-checkpoint-watcher"

    def __init__(self, holder: ModelHolder, observe: bool = True) -> None:
        super().__init__()
        self.holder = holder
        self.observe = observe and holder.cycle is None   # a pinned checkpoint never changes

    def start(self) -> None:
        if not self.observe:
            super().start()
            return
        d = checkpoint_dir(self.holder.data_dir)
        d.mkdir(parents=True, exist_ok=True)
        super().start(d, lambda name: (name in (COMMIT_MARKER, LIVE_SIDECAR)
                                       or bool(CKPT_RE.match(name))))

    def work(self) -> None:
        self.holder.reload()
