"""Fixtures and helpers shared by the ingest, file-monitor and crawler tests.

A fresh SQLite store per test, a pump that applies monitor events to the store on the test
thread until a condition holds, and a scripted HTTP server on 127.0.0.1.
"""
from __future__ import annotations

import http.server
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest
from sqlalchemy import select


@pytest.fixture
def store(tmp_path, monkeypatch):
    from store import open_store

    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)
    st = open_store(tmp_path / "data")
    yield st
    st.close()


def rows(store, uri_prefix: str | None = None) -> list[dict]:
    """Every document row as a plain dict (id order)."""
    from store.models import Document

    with store.session(read_only=True) as s:
        q = select(Document).order_by(Document.id)
        if uri_prefix:
            q = q.where(Document.uri.startswith(uri_prefix, autoescape=True))
        return [{"id": d.id, "uri": d.uri, "status": d.status, "reason": d.reason, "sha256": d.sha256,
                 "encoding": d.encoding, "source": d.source} for d in s.scalars(q)]


def pump(events: queue.Queue, ingestor, until: Callable[[], bool], timeout: float = 5.0,
         seen: list | None = None) -> float:
    """Apply monitor events to the store until `until()` holds; returns the seconds it took.

    Fails the test when the deadline passes first. Waits on the queue (no sleeping).
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    while not until():
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"condition not met within {timeout} s; events seen: {seen}")
        try:
            ev = events.get(timeout=min(left, 0.1))
        except queue.Empty:
            continue
        if seen is not None:
            seen.append((ev.kind, ev.path, ev.reason))
        ingestor.handle(ev)
    return time.monotonic() - t0


def settle(events: queue.Queue, ingestor, quiet: float, seen: list | None = None) -> None:
    """Apply events until none arrives for `quiet` seconds."""
    while True:
        try:
            ev = events.get(timeout=quiet)
        except queue.Empty:
            return
        if seen is not None:
            seen.append((ev.kind, ev.path, ev.reason))
        ingestor.handle(ev)


# --- a scripted HTTP server on 127.0.0.1 --------------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (timeouts)


@dataclass
class Site:
    """Routes by path; a list of Routes answers in turn (the last one repeats)."""

    host: str
    port: int
    routes: dict = field(default_factory=dict)
    hits: list = field(default_factory=list)  # (path, user agent, monotonic time)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def html(self, path: str, body: str, **kw) -> None:
        self.routes[path] = Route(200, body.encode(), {"Content-Type": "text/html; charset=utf-8"}, **kw)

    def count(self, path: str) -> int:
        return sum(1 for h in self.hits if h[0] == path)

    def times(self, path: str) -> list[float]:
        return [h[2] for h in self.hits if h[0] == path]


def page(title: str, words: str, links: tuple[str, ...] = ()) -> str:
    """A small HTML page with enough text for the extractor and the given links."""
    anchors = "".join(f'<li><a href="{h}">link {i}</a></li>' for i, h in enumerate(links))
    para = " ".join([words] * 8)
    return (f"<!doctype html><html><head><title>{title}</title></head><body><main><h1>{title}</h1>"
            f"<p>{para}</p><ul>{anchors}</ul></main></body></html>")


@pytest.fixture
def site():
    routes: dict = {}
    served: dict = {}
    s = Site("127.0.0.1", 0, routes)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            path = self.path
            s.hits.append((path, self.headers.get("User-Agent", ""), time.monotonic()))
            route = routes.get(path)
            if isinstance(route, list):
                i = served.get(path, 0)
                served[path] = i + 1
                route = route[min(i, len(route) - 1)]
            if route is None:
                route = Route(404, b"not found", {"Content-Type": "text/plain"})
            if route.delay and s.stop.wait(route.delay):
                return
            self.send_response(route.status)
            for k, v in route.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            try:
                self.wfile.write(route.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):  # a client hanging up is normal here
            pass

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    s.port = server.server_address[1]
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield s
    s.stop.set()
    server.shutdown()
    server.server_close()
    t.join()
