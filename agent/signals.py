"""Ctrl-C, SIGTERM and SIGHUP as a stop request: the one place the commands install signal
handlers.

`cllm crawl`, `cllm train` and `cllm agent` turn a signal into `stop.set()`, so the work ends at its
next boundary (a file, a page, a training step) with everything stored so far committed.
Handlers are installed only for the `with` block and the previous ones restored after it;
off the main thread, where Python cannot handle signals, the block runs without them.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, *, sigterm: bool = False,
                    second_interrupt_aborts: bool = False,
                    announce: bool = False) -> Iterator[threading.Event]:
    """While inside: SIGINT (and SIGTERM and SIGHUP if `sigterm`: a closed terminal stops the
    work as SIGTERM does, instead of killing it) sets `stop`.

    second_interrupt_aborts: a signal arriving when `stop` is already set raises
    KeyboardInterrupt (abort now; the open transaction is rolled back).
    announce: log a warning for each signal (off for the crawl, whose handler may interrupt
    a write to stderr that it would then write into).
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if second_interrupt_aborts and stop.is_set():
            raise KeyboardInterrupt
        if announce:
            log.warning("received %s: stopping at the next step boundary",
                        signal.Signals(signum).name)
        stop.set()

    signums = ((signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if sigterm
               else (signal.SIGINT,))
    previous = {sig: signal.signal(sig, handler) for sig in signums}
    try:
        yield stop
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
