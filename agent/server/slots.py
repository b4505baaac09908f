"""The one bound on generations at once: `Slots` (sized by Limits.concurrency), taken by a
request before its generation starts and given back when it ends; a request that finds every
slot taken waits up to `queue_timeout` seconds (`acquire`), else it gets 429.
"""
from __future__ import annotations

import threading

import anyio


class Slots:
    """At most `n` generations at once; a thread waits up to `timeout` seconds for a slot.
    A threading primitive (not the event loop's), so tests and in-process callers can hold
    slots too."""

    def __init__(self, n: int) -> None:
        self.n, self.busy = n, 0
        self._cond = threading.Condition()

    def acquire(self, timeout: float) -> bool:
        with self._cond:
            if not self._cond.wait_for(lambda: self.busy < self.n, timeout=timeout):
                return False
            self.busy += 1
            return True

    def release(self) -> None:
        with self._cond:
            self.busy -= 1
            self._cond.notify()


async def acquire(slots: Slots, timeout: float) -> bool:
    """Take a free slot at once, else wait for one on a worker thread; a slot won by a
    request cancelled meanwhile is given back."""
    if slots.acquire(0):
        return True
    got: list[bool] = []

    def take() -> bool:
        got.append(slots.acquire(timeout))
        return got[-1]
    try:
        return await anyio.to_thread.run_sync(take)
    except BaseException:
        if got and got[-1]:
            slots.release()
        raise
