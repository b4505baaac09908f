"""The one bound on generations at once: `Slots` (sized by Limits.concurrency), taken by a
request before its generation starts and given back when it ends; a request that finds every
slot taken waits up to `queue_timeout` seconds (`await slots.wait(timeout)`), else it gets
429.

A waiting request holds no worker thread: it waits on a future of the event loop, so any
number of waiting requests leave the thread pool (40 threads, anyio's default) to the routes
that read the store.
"""
from __future__ import annotations

import asyncio
import threading

import anyio


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class Slots:
    """At most `n` generations at once. A request on the event loop waits for a slot with
    `await wait(timeout)`; a thread (tests, in-process callers) with `acquire(timeout)`.
    release() may run on any thread: it wakes a thread waiting and every request waiting
    (the first to run takes the slot, the others wait again)."""

    def __init__(self, n: int) -> None:
        self.n, self.busy = n, 0
        self._cond = threading.Condition()
        self._waiting: dict[asyncio.Future, asyncio.AbstractEventLoop] = {}

    def acquire(self, timeout: float) -> bool:
        with self._cond:
            if not self._cond.wait_for(lambda: self.busy < self.n, timeout=timeout):
                return False
            self.busy += 1
            return True

    async def wait(self, timeout: float) -> bool:
        """Take a slot, waiting up to `timeout` seconds on the loop; False if none came. A
        request cancelled while it waits takes none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._cond:
                if self.busy < self.n:
                    self.busy += 1
                    return True
                left = deadline - loop.time()
                if left <= 0:
                    return False
                fut = loop.create_future()
                self._waiting[fut] = loop
            try:
                with anyio.move_on_after(left):
                    await fut
            finally:
                with self._cond:
                    self._waiting.pop(fut, None)

    def release(self) -> None:
        with self._cond:
            self.busy -= 1
            self._cond.notify()
            waiting = list(self._waiting.items())
        for fut, loop in waiting:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:        # that loop is closed: nobody waits on it any more
                pass
