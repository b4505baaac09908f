"""Fixtures of the agent tests: a scripted HTTP server on 127.0.0.1 (`site`). The `store`
fixture (both backends) is the one of tests/conftest.py."""
from __future__ import annotations

import http.server
import threading
import time

import pytest

from tests.agent.helpers import Route, Site


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
            s.requests.append((path, dict(self.headers)))
            route = routes.get(path)
            if isinstance(route, list):
                i = served.get(path, 0)
                served[path] = i + 1
                route = route[min(i, len(route) - 1)]
            if route is None:
                route = Route(404, b"not found", {"Content-Type": "text/plain"})
            if route.delay and s.stop.wait(route.delay):
                return
            etag, modified = route.headers.get("ETag"), route.headers.get("Last-Modified")
            if ((etag and self.headers.get("If-None-Match") == etag)
                    or (modified and self.headers.get("If-Modified-Since") == modified)):
                self.send_response(304)  # a conditional request for what the client has
                self.send_header("ETag", etag or "")
                self.end_headers()
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


@pytest.fixture
def env(store_target):
    """A store on each backend (SQLite, and PostgreSQL when the server is there) and the
    data directory that holds the checkpoints."""
    store = store_target.open()
    store_target.data_dir.mkdir(parents=True, exist_ok=True)
    yield store, store_target.data_dir
    store.close()
