"""Helpers shared by the ingest, file-monitor and crawler tests: document rows, a pump that
applies monitor events to the store on the test thread until a condition holds, and the
routes of the scripted HTTP server (the `site` fixture in conftest.py)."""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest
from sqlalchemy import select


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
    """Routes by path; a list of Routes answers in turn (the last one repeats). A route with
    an ETag or Last-Modified header answers a request that names it with 304."""

    host: str
    port: int
    routes: dict = field(default_factory=dict)
    hits: list = field(default_factory=list)  # (path, user agent, monotonic time)
    requests: list = field(default_factory=list)  # (path, request headers)
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


class DripServer:
    """A 127.0.0.1 server that answers each connection with a status line and then one
    header line every `interval` seconds, up to `max_lines` (then it ends the headers and
    sends a short body); /robots.txt is a plain 404. `lines` counts the header lines sent,
    `connections` the connections accepted for other paths. A context manager: its thread is joined on exit."""

    def __init__(self, interval: float = 0.05, max_lines: int = 100) -> None:
        import socket

        self.interval, self.max_lines = interval, max_lines
        self.lines = self.connections = 0
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)  # accept() wakes up to see `stop`
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, name="drip-server")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "DripServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()

    def _serve(self) -> None:
        import socket

        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            with conn:
                request = conn.recv(65536)
                try:
                    if request.startswith(b"GET /robots.txt "):  # no robots.txt: all allowed
                        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
                        continue
                    self.connections += 1
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n")
                    for i in range(self.max_lines):
                        if self.stop.wait(self.interval):
                            return
                        conn.sendall(f"X-Drip-{i}: {'x' * 20}\r\n".encode())
                        self.lines += 1
                    conn.sendall(b"Content-Length: 6\r\n\r\nslow!\n")
                except OSError:  # the client gave up and closed the connection
                    continue
