"""The checkpoint a server holds in memory, and the watcher that reloads it.

`ModelHolder` owns the loaded checkpoint (swapped as one reference, so a generation that
started keeps the model it started with). `CheckpointWatcher` is one thread that waits on an
event: a watchdog observer on the checkpoints folder sets it when a checkpoint file or the
trainer's commit marker (agent/training/model_state.py) changes, and `notify()` sets it from
inside the agent's process. On each wake-up the thread asks the store which checkpoint is the latest
and loads it if it is not the one held: the store decides, the files only wake it up.
No polling: the thread blocks on the event until something happens or it is stopped.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Optional

from agent.generation.checkpoint import (DECODE_WEIGHTS, ServingCheckpoint, latest_ref,
                                         load_serving_checkpoint)
from agent.server.wake import WakeThread
from agent.training.model_state import CKPT_RE, COMMIT_MARKER, checkpoint_dir
from engine.errors import CllmError

log = logging.getLogger(__name__)


class ModelHolder:
    """The served checkpoint: None until one loads; `cycle` pins one cycle's checkpoint."""

    def __init__(self, store, data_dir: Path, cycle: Optional[int] = None,
                 weights: str = DECODE_WEIGHTS) -> None:
        self.store, self.data_dir, self.cycle, self.weights = store, Path(data_dir), cycle, weights
        self.current: Optional[ServingCheckpoint] = None
        self.error: Optional[str] = None        # why nothing is loaded (for /health)
        self.loads = 0                          # checkpoints loaded so far
        self._lock = threading.Lock()
        self.listeners: list[Callable[[ServingCheckpoint], None]] = []

    def reload(self) -> bool:
        """Load the store's latest checkpoint unless it is the one held; True if it changed.
        A pinned cycle loads once."""
        with self._lock:
            cur = self.current
            if cur is not None:
                if self.cycle is not None:
                    return False
                ref = latest_ref(self.store)
                if ref is None or ref.id == cur.ref.id:
                    return False
            try:
                new = load_serving_checkpoint(self.store, self.data_dir, self.cycle,
                                              self.weights)
            except CllmError as e:
                self.error = e.one_line()
                log.warning("cannot serve a checkpoint: %s", self.error)
                return False
            if new is None:
                self.error = "no checkpoint yet: the agent has not finished a cycle"
                return False
            if cur is not None and new.ref.id == cur.ref.id:
                return False
            self.current, self.error = new, None
            self.loads += 1
        log.info("serving checkpoint %s (cycle %s, step %s)", new.ref.path, new.cycle,
                 new.step)
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
        super().start(d, lambda name: name == COMMIT_MARKER or bool(CKPT_RE.match(name)))

    def work(self) -> None:
        self.holder.reload()
