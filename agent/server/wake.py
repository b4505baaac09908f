"""One thread that does its work each time it is woken: at start, on `notify()`, and when a
watchdog observer sees a matching file change in a folder. The dashboard's store watcher
and the checkpoint reloader are two of them. No timer: nothing happening wakes nothing."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Optional

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


class WakeThread:
    """Subclasses implement `work()`; a failure there ends the thread and is kept in
    `failure` (logged with its traceback) for stop() callers to see."""

    name = "cllm-wake"

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._observer = None
        self.failure: Optional[BaseException] = None

    def work(self) -> None:
        raise NotImplementedError

    def notify(self) -> None:
        """Do the work now (called in-process, e.g. after a checkpoint was committed)."""
        self._wake.set()

    def start(self, folder: Optional[Path] = None,
              matches: Optional[Callable[[str], bool]] = None,
              kinds: Optional[tuple[str, ...]] = None) -> None:
        """Start the thread (it works once at once) and, with `folder`, an observer that
        wakes it when a file whose name `matches` changes there (events of `kinds`)."""
        if folder is not None:
            self._observer = self._observe(Path(folder), matches or (lambda name: True), kinds)
        self._wake.set()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _observe(self, folder: Path, matches: Callable[[str], bool], kinds):
        wake = self._wake

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if kinds is not None and event.event_type not in kinds:
                    return
                for p in (getattr(event, "dest_path", ""), event.src_path):
                    if p and matches(Path(str(p)).name):
                        wake.set()
                        return

        obs = Observer()
        obs.schedule(Handler(), str(folder), recursive=False)
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
                self.work()
        except BaseException as e:    # keep it for stop() and the log, with its traceback
            self.failure = e
            log.exception("%s failed", self.name)

    def stop(self) -> None:
        """End the observer and the thread, and join both."""
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
        if self._thread is not None:
            self._thread.join()
