"""A request's generation: `start_generation` (a slot, the checkpoint it names, its
TextStream), `Run`, which reads it on the event loop and frees the slot when it ends, and
`RunResponse`, the streamed response that always closes its run.

Every piece of a run comes from the checkpoint's batcher (agent/generation/batcher.py),
whose decoding thread hands each id to the event loop, where it becomes text: the loop never
blocks, and a client that hangs up ends its generation before the next token. A run holds
its slot at most `request_timeout` seconds (Limits; `--request-timeout`): then it ends as if
cancelled, whatever its client does (one that stops reading is dropped by the protocol's
send timeout: protocol.py).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

import anyio
from starlette.responses import StreamingResponse

from agent.generation.checkpoint import ServingCheckpoint
from agent.generation.stream import NoInfill, TextStream
from agent.server.errors import ApiError
from agent.server.validation import CompletionRequest
from engine.errors import CllmError

log = logging.getLogger(__name__)


def served_or_503(service) -> ServingCheckpoint:
    ckpt = service.holder.current
    if ckpt is None:
        raise ApiError(503, f"no model loaded yet: {service.holder.error or 'loading'}",
                       "unavailable_error", {"Retry-After": "5"})
    return ckpt


async def take_slot(service) -> None:
    """Wait for a generation slot (at most the queue timeout; holding no thread), else 429.
    The caller releases it."""
    if not await service.slots.wait(service.limits.queue_timeout):
        service.metrics.rejected()
        raise ApiError(429, f"all {service.slots.n} generation slots are busy; retry shortly",
                       "rate_limit_error", {"Retry-After": "1"})


async def start_generation(service, req: CompletionRequest):
    """(checkpoint, text stream, generation) of a validated request: a generation slot (or
    429), then the checkpoint it names (the served one, or 503; an earlier cycle's, loaded
    while the request holds its slot, so loads are bounded by the slots too: 400 when there
    is none) and the prompt tokenised, both off the loop."""
    if req.checkpoint is None:
        served_or_503(service)                   # nothing loaded yet: no need to wait
    await take_slot(service)
    try:
        if req.checkpoint is None:
            ckpt = served_or_503(service)
        else:
            try:
                ckpt = await anyio.to_thread.run_sync(service.checkpoint_of, req.checkpoint)
            except CllmError as e:
                raise ApiError(400, f"'checkpoint': {e.one_line()}") from None
        # tokenising a long prompt takes a while: off the loop too
        try:
            ts = await anyio.to_thread.run_sync(TextStream, ckpt, req.prompt, req.sampling,
                                                None, service.batcher(ckpt), req.suffix,
                                                req.extra, req.parse_special)
        except NoInfill as e:
            raise ApiError(400, f"'suffix': {e.one_line()}") from None
    except BaseException:
        service.slots.release()
        raise
    return ckpt, ts, Run(service, ts)


class Run:
    """One generation holding a slot, read on the event loop (`async for` over its
    TextStream: the batcher's thread hands it each id). close() (always called, on the
    loop) ends it if unfinished, frees the slot and counts it in the metrics, once."""

    def __init__(self, service, ts: TextStream) -> None:
        self.service, self.ts = service, ts
        self.t0 = time.perf_counter()
        self.first: Optional[float] = None
        self.expired = False                    # ended by the request timeout
        self._open = True
        self._deadline = asyncio.get_running_loop().call_later(
            service.limits.request_timeout, self._expire)

    def _expire(self) -> None:
        if self._open:
            self.expired = True
            log.warning("a generation held its slot %g s (the request timeout): ended after "
                        "%d tokens", self.service.limits.request_timeout,
                        self.ts.completion_tokens)
            self.close()

    async def pieces(self):
        try:
            async for piece in self.ts:
                if self.first is None:
                    self.first = time.perf_counter() - self.t0
                yield piece
        finally:
            self.close()

    async def text(self) -> str:
        """The whole text (a response that is not streamed)."""
        return "".join([p async for p in self.pieces()])

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._deadline.cancel()
        self.ts.close()
        self.service.slots.release()
        finished = self.ts.finish_reason in ("stop", "length")
        self.service.metrics.generated(self.ts.completion_tokens, self.ts.prompt_tokens,
                                       time.perf_counter() - self.t0, self.first, finished)


class RunResponse(StreamingResponse):
    """A streamed generation whose run is closed when the response ends, however it ends
    (finished, the client hung up, the server stopped)."""

    def __init__(self, run: Run, content, **kw) -> None:
        super().__init__(content, **kw)
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.close()
