"""Continuous batching for a served model: the generations in flight are rows of one
engine.generate.BatchDecoder, and one thread steps them all at once.

At batch 1 a decoding step streams every weight for one token; stepping R sequences
together streams them once for R tokens, so concurrent requests share that cost instead
of queueing for it (benchmarks/bench_engine.py's batched rows). A request joins at the next
step (its prompt is prefilled into a free row), leaves when it ends or its reader stops;
the rows in use are kept at the front so a step computes only those.

The decoding thread starts with the first request and ends when none is left, so an idle
server (or a checkpoint replaced by a newer one) holds no thread; `close` ends and joins it.
The thread hands each sampled id to its request's reader at once and never waits for one, so
a slow reader never holds back the others: `stream` reads them on a thread of the caller's
(a blocking iterator), `astream` on an asyncio event loop (the thread schedules each id on
the loop: no thread in between). A failure while stepping is raised to every request in the
step, with its traceback, and the batcher carries on with the next requests.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from engine.generate import BatchDecoder, sample_next

log = logging.getLogger(__name__)
END = object()        # handed to a request's reader after its last id

# What the decoding thread hands a reader, one call each: a sampled id, then END, or the
# exception that ended the request. Called on the decoding thread: it must not block.
Deliver = Callable[[object], None]


class _Request:
    def __init__(self, ids: list[int], max_new: int, temperature: float, top_k, top_p,
                 seed, deliver: Deliver) -> None:
        self.ids, self.left = ids, int(max_new)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.rng = np.random.default_rng(seed)
        self.deliver = deliver
        self.cancelled = False
        self.last = 0                     # the token its row appends at the next step


class _Stream:
    """A request's ids read on the caller's thread (blocking); close() ends the request."""

    def __init__(self, out: queue.SimpleQueue, cancel: Callable[[], None]) -> None:
        self._out, self._cancel, self._open = out, cancel, True

    def __iter__(self) -> "_Stream":
        return self

    def __next__(self) -> int:
        if not self._open:
            raise StopIteration
        item = self._out.get()
        if item is END:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        if self._open:
            self._open = False
            self._cancel()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:                          # noqa: BLE001 - at interpreter exit
            pass


class LoopStream:
    """A request's ids read on an asyncio event loop (`async for`): the decoding thread
    schedules each one on the loop, where it waits in an asyncio queue for its reader.
    Made, read and closed on the loop; close() ends the request (and a reader waiting).
    Unlike a blocking stream it is not closed when dropped (the request holds it): the
    reader closes it, as TextStream does."""

    def __init__(self) -> None:
        self._cancel: Callable[[], None] = lambda: None     # set by DecodeBatcher.astream
        self._open = True
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()

    def deliver(self, item: object) -> None:           # on the decoding thread
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:            # the loop is closed: nobody reads any more
            self._cancel()

    def __aiter__(self) -> "LoopStream":
        return self

    async def __anext__(self) -> int:
        if not self._open:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is END:
            self.close()
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        if self._open:
            self._open = False
            self._cancel()
            self._queue.put_nowait(END)      # a reader waiting for an id ends


class DecodeBatcher:
    """Generation for up to `rows` requests at once from one model (read-only while served)."""

    def __init__(self, model, rows: int, weights: str = "int8") -> None:
        if rows < 1:
            raise ValueError(f"a batcher needs at least one row, got {rows}")
        self.model, self.rows, self.weights = model, int(rows), weights
        self._dec: Optional[BatchDecoder] = None
        self._lock = threading.RLock()    # the queues and the thread's start and end
        self._pending: deque[_Request] = deque()
        self._live: list[_Request] = []   # row i holds _live[i]
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self.steps = 0                    # batched steps run (for tests and metrics)
        self.widest = 0                   # the most rows one step has decoded

    def submit(self, prompt_ids: Sequence[int], max_new_tokens: int, deliver: Deliver,
               temperature: float = 1.0, top_k: Optional[int] = None,
               top_p: Optional[float] = None, seed: Optional[int] = None
               ) -> Callable[[], None]:
        """Queue a request: the decoding thread hands its sampled ids to `deliver` as
        Model.generate_stream yields them (the same sliding window at the context length),
        then END. Returns the function that cancels it (callable from any thread; the
        request leaves at the next step and nothing more is delivered)."""
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise ValueError("generation needs a prompt of at least one token")
        self.model._check_inputs(np.asarray([ids[-self.model.config.context:]]))
        req = _Request(ids, max_new_tokens, temperature, top_k, top_p, seed, deliver)
        if req.left <= 0:
            deliver(END)                           # nothing to generate
            return lambda: None
        with self._lock:
            if self._closed:
                raise RuntimeError("the decode batcher is closed")
            self._pending.append(req)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cllm-decode-batch",
                                                daemon=True)
                self._thread.start()
        return lambda: self._cancel(req)

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
               top_k: Optional[int] = None, top_p: Optional[float] = None,
               seed: Optional[int] = None) -> Iterator[int]:
        """A blocking iterator of the request's sampled ids (`submit`); closing it (or
        dropping it) ends the request."""
        out: queue.SimpleQueue = queue.SimpleQueue()
        cancel = self.submit(prompt_ids, max_new_tokens, out.put, temperature=temperature,
                             top_k=top_k, top_p=top_p, seed=seed)
        return _Stream(out, cancel)

    def astream(self, prompt_ids: Sequence[int], max_new_tokens: int,
                temperature: float = 1.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, seed: Optional[int] = None) -> LoopStream:
        """The request's sampled ids on the running event loop (`async for`; `submit`);
        closing it ends the request. Call it on the loop."""
        ids = LoopStream()
        ids._cancel = self.submit(prompt_ids, max_new_tokens, ids.deliver,
                                  temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        return ids

    def _cancel(self, req: _Request) -> None:
        with self._lock:
            req.cancelled = True

    def close(self) -> None:
        """End the requests in flight and join the decoding thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            thread.join()

    # ------------------------------------------------------------------ the decoding thread
    def _run(self) -> None:
        try:
            while self._cycle():
                pass
        except BaseException as e:               # noqa: BLE001 - handed to every reader
            log.exception("decoding failed")
            self._fail_all(e)

    def _cycle(self) -> bool:
        """Admit, step, hand out; False when nothing is left to do."""
        with self._lock:
            self._drop_cancelled()
            if self._closed:
                self._end_all()
                return False
            if not self._live and not self._pending:
                self._thread = None                # idle: this thread ends, the next
                return False                       # request starts another
            joining = []
            while self._pending and len(self._live) + len(joining) < self.rows:
                joining.append(self._pending.popleft())
        if self._dec is None:
            self._dec = BatchDecoder(self.model, self.rows, self.weights)
        for req in joining:
            row = len(self._live)
            self._live.append(req)
            self._give(req, self._dec.prefill(req.ids[-self.model.config.context:], row))
        live = [r for r in self._live if not r.cancelled and r.left > 0]
        if not live or len(live) != len(self._live):
            return True                            # drop the finished first
        T = self.model.config.context
        for i, req in enumerate(self._live):       # a full window slides back to T/2
            if self._dec.n[i] >= T:
                self._give(req, self._dec.prefill(req.ids[-(T // 2 or 1):], i))
        live = [r for r in self._live if not r.cancelled and r.left > 0]
        if len(live) != len(self._live):
            return True
        A = len(self._live)
        try:
            logits = self._dec.step([r.last for r in self._live], rows=A)
        except Exception as e:                     # noqa: BLE001 - surfaces to these readers
            for req in self._live:
                req.deliver(e)
                req.cancelled = True
            return True
        self.steps += 1
        self.widest = max(self.widest, A)
        for i, req in enumerate(self._live):
            self._give(req, logits[i])
        return True

    def _give(self, req: _Request, logits: np.ndarray) -> None:
        """Sample the request's next id from its logits and hand it to its reader."""
        try:
            nxt = sample_next(logits, req.rng, req.temperature, req.top_k, req.top_p)
        except Exception as e:                     # noqa: BLE001 - e.g. non-finite logits
            req.deliver(e)
            req.cancelled = True
            return
        req.ids.append(nxt)
        req.last = nxt
        req.left -= 1
        req.deliver(nxt)
        if req.left <= 0:
            req.deliver(END)

    def _drop_cancelled(self) -> None:
        """Free the rows of ended requests, moving the last live row into each gap."""
        i = 0
        while i < len(self._live):
            req = self._live[i]
            if req.cancelled or req.left <= 0:
                last = len(self._live) - 1
                if i != last:
                    self._dec.move(last, i)
                    self._live[i] = self._live[last]
                self._live.pop()
            else:
                i += 1
        self._pending = deque(r for r in self._pending if not r.cancelled)

    def _end_all(self) -> None:
        for req in list(self._live) + list(self._pending):
            req.deliver(END)
        self._live.clear()
        self._pending.clear()

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            for req in list(self._live) + list(self._pending):
                req.deliver(error)
            self._live.clear()
            self._pending.clear()
            self._dec = None
            if not self._closed:
                self._thread = None
