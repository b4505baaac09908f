"""Live updates for the dashboard: `/api/events`, a Server-Sent Events stream that says
"the store changed" (and which parts) or "a new checkpoint is served".

`StoreWatcher` is one thread blocked on an event. A watchdog observer on the SQLite file's
folder sets it when the database (or its WAL) is written, and `notify()` sets it from inside
the agent (each committed checkpoint) or after a control action. On each wake-up the
thread reads a small digest of the store (the rows `cllm status` shows, the targets, the
URLs' count and latest change, read by one SQL aggregate) and, when a part differs from the
last digest, sends its name to every subscriber. No timer: a store nobody writes sends nothing. (On PostgreSQL there is no file
to watch, so out of the agent's process only checkpoints and control actions are seen.)
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from pathlib import Path

from starlette.requests import Request
from starlette.responses import StreamingResponse

from agent import reports
from agent.server.wake import WakeThread
from store import frontier

log = logging.getLogger(__name__)
_CLOSE = object()


class EventHub:
    """Subscribers are (event loop, asyncio.Queue) pairs; publish() is thread-safe."""

    def __init__(self) -> None:
        self._subs: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = set()
        self._lock = threading.Lock()
        self.closed = False

    def subscribe(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue]:
        sub = (asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub) -> None:
        with self._lock:
            self._subs.discard(sub)

    def publish(self, event: str, data: dict) -> None:
        self._send((event, data))

    def close(self) -> None:
        """End every stream (before the server shuts down, so it need not wait for them)."""
        self.closed = True
        self._send(_CLOSE)

    def _send(self, item) -> None:
        with self._lock:
            subs = list(self._subs)
        for loop, q in subs:
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:        # that loop has closed
                self.unsubscribe((loop, q))


def store_digest(session, data_dir: Path, database: str) -> dict[str, str]:
    """A hash per part of the store the dashboard shows."""
    def h(obj) -> str:
        return hashlib.sha256(json.dumps(obj, default=reports.jsonable, sort_keys=True)
                              .encode()).hexdigest()[:16]
    st = reports.status_view(session, data_dir, database)
    # the URLs by one SQL aggregate (their count, the latest recorded): never their rows,
    # which a crawl adds by the thousand while every store change asks
    return {"status": h(st), "targets": h(reports.target_rows(session)),
            "urls": h(frontier.urls_changed(session))}


class StoreWatcher(WakeThread):
    """Publishes which parts of the store changed, on each wake-up (module docstring)."""

    name = "cllm-store-watcher"

    def __init__(self, store, data_dir: Path, hub: EventHub, observe: bool = True) -> None:
        super().__init__()
        self.store, self.data_dir, self.hub = store, Path(data_dir), hub
        self.observe = observe
        self._last: dict[str, str] = {}

    def start(self) -> None:
        db = self.store.path
        if self.observe and db is not None and db.parent.is_dir():
            names = {db.name, db.name + "-wal", db.name + "-journal"}
            super().start(db.parent, names.__contains__,
                          ("modified", "created", "moved", "closed"))
        else:
            super().start()

    def work(self) -> None:
        try:
            with self.store.session(read_only=True) as s:
                digest = store_digest(s, self.data_dir, self.store.describe())
        except Exception as e:     # a locked or unreachable store: the next change retries
            log.warning("dashboard: cannot read the store: %s", e)
            return
        changed = sorted(k for k, v in digest.items() if self._last.get(k) != v)
        first = not self._last
        self._last = digest
        if changed and not first:
            self.hub.publish("store", {"changed": changed})


async def events(request: Request) -> StreamingResponse:
    hub: EventHub = request.app.state.service.hub

    async def stream():
        loop_q = hub.subscribe()
        try:
            yield b"retry: 2000\n\n"
            ckpt = request.app.state.service.holder.current
            yield _sse("hello", {"cycle": ckpt.cycle if ckpt is not None else None})
            while not hub.closed:
                item = await loop_q[1].get()
                if item is _CLOSE:
                    return
                yield _sse(*item)
        finally:
            hub.unsubscribe(loop_q)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
