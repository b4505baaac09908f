"""The checkpoint a server holds in memory, and the watcher that reloads it.

`ModelHolder` owns the loaded checkpoint (swapped as one reference, so a generation that
started keeps the model it started with). `CheckpointWatcher` is one thread that waits on an
event: a watchdog observer on the checkpoints folder sets it when a checkpoint file or the
trainer's commit marker (agent/serving.py) changes, and `notify()` sets it from inside the
agent's process. On each wake-up the thread asks the store which checkpoint is the latest
and loads it if it is not the one held: the store decides, the files only wake it up.
No polling: the thread blocks on the event until something happens or it is stopped.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Optional

from agent.model_state import CKPT_RE, checkpoint_dir
from agent.serving import (COMMIT_MARKER, ServingCheckpoint, latest_ref,
                           load_serving_checkpoint)
from engine.errors import CllmError

log = logging.getLogger(__name__)


class ModelHolder:
    """The served checkpoint: None until one loads; `cycle` pins one cycle's checkpoint."""

    def __init__(self, store, data_dir: Path, cycle: Optional[int] = None) -> None:
        self.store, self.data_dir, self.cycle = store, Path(data_dir), cycle
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
                new = load_serving_checkpoint(self.store, self.data_dir, self.cycle)
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


class CheckpointWatcher:
    """Reload `holder` whenever the checkpoints folder says something was committed.

    start() loads the first checkpoint on the watcher's thread (a server answers 503 on
    /health meanwhile) and starts a watchdog observer; stop() ends both and joins them.
    A failure in the thread is kept in `failure` and logged with its traceback."""

    def __init__(self, holder: ModelHolder, observe: bool = True) -> None:
        self.holder = holder
        self.observe = observe and holder.cycle is None   # a pinned checkpoint never changes
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._observer = None
        self.failure: Optional[BaseException] = None

    def notify(self) -> None:
        """Check the store now (called in-process after a checkpoint was committed)."""
        self._wake.set()

    def start(self) -> None:
        if self.observe:
            self._observer = self._start_observer()
        self._wake.set()                   # the first load
        self._thread = threading.Thread(target=self._run, name="cllm-checkpoint-watcher",
                                        daemon=True)
        self._thread.start()

    def _start_observer(self):
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        wake = self._wake

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                for p in (getattr(event, "dest_path", ""), event.src_path):
                    name = Path(str(p)).name if p else ""
                    if name == COMMIT_MARKER or CKPT_RE.match(name):
                        wake.set()
                        return

        d = checkpoint_dir(self.holder.data_dir)
        d.mkdir(parents=True, exist_ok=True)
        obs = Observer()
        obs.schedule(Handler(), str(d), recursive=False)
        obs.daemon = True
        obs.start()
        return obs

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait()
                if self._stop.is_set():
                    return
                self._wake.clear()
                self.holder.reload()
        except BaseException as e:    # keep it for stop() and the log, with its traceback
            self.failure = e
            log.exception("checkpoint watcher failed")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
        if self._thread is not None:
            self._thread.join()
