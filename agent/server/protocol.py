"""The HTTP protocol uvicorn runs for `cllm serve`: uvicorn's h11 protocol with the guards
uvicorn lacks (its `timeout_keep_alive` runs only between requests and restarts at every
byte received, and it has no timeout on a request's head: encode/uvicorn issue #157), all
before any route or authentication runs:

- a connection has `read_timeout` seconds from its start (or from the end of its last
  response) to send a whole request head, however slowly it drips it in; then it is closed;
- at most `max_connections` are open: one more closes the oldest connection still waiting
  for its head (a client that sends its request at once always gets in), else itself, so
  slow clients never exhaust the file descriptors the agent shares;
- a client that reads nothing of its response for `send_timeout` seconds (the socket's
  buffers stay full) is dropped: its route sees a disconnect (a generation ends and frees
  its slot) and the connection's descriptor is freed.

`guarded_protocol(limits)` makes the class for one server (its connections waiting for a
head are counted per server); uvicorn.Config takes it as `http`.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Optional

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


def guarded_protocol(limits) -> type:
    """An H11Protocol class enforcing `limits` (agent/server/config.Limits)."""
    waiting: dict["Guarded", asyncio.TimerHandle] = {}   # oldest first: eviction order

    class Guarded(H11Protocol):
        _stall: Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                victim = next(iter(waiting), self)
                log.info("%d connections open (the most allowed): closing %s",
                         len(self.connections), "a new one" if victim is self
                         else "the oldest one still to send its request head")
                victim._drop()
                if victim is self:
                    return
            self._expect_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._expect_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._expect_head()

        def connection_lost(self, exc) -> None:
            self._head_done()
            if self._stall is not None:
                self._stall.cancel()
            super().connection_lost(exc)

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._stall is None:
                self._stall = self.loop.call_later(limits.send_timeout, self._stalled)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None

        # ------------------------------------------------------------------ the guards
        def _expect_head(self) -> None:
            """Between requests the head deadline runs (armed once: bytes dripping in do
            not extend it); once a head is in, it stops."""
            if self.conn.their_state is not h11.IDLE:
                self._head_done()
            elif self not in waiting and not self.transport.is_closing():
                waiting[self] = self.loop.call_later(limits.read_timeout, self._head_late)

        def _head_done(self) -> None:
            timer = waiting.pop(self, None)
            if timer is not None:
                timer.cancel()

        def _head_late(self) -> None:
            waiting.pop(self, None)
            if self.conn.their_state is h11.IDLE:
                log.info("closed a connection that sent no whole request head within %g s",
                         limits.read_timeout)
                self._drop()

        def _stalled(self) -> None:
            self._stall = None
            log.warning("dropped a connection whose client read nothing of its response for "
                        "%g s", limits.send_timeout)
            self.transport.abort()

        def _drop(self) -> None:
            self._head_done()
            self.transport.abort()

    return Guarded
