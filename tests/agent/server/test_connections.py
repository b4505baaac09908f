"""What slow, stalled and waiting clients may hold, against a real server and raw sockets:
completions waiting for a slot hold no worker thread (the store routes answer meanwhile); a
generation holds its slot at most the request timeout; a client that stops reading is dropped
and its generation ends; request heads and bodies sent too slowly are cut off, and
connections still sending their head cannot crowd out a request (protocol.py)."""
from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from agent.server import api
from agent.server.config import Limits
from tests.agent.server.conftest import token_of, wait_loaded


def raw_post(server, path: str, body: dict, rcvbuf: int = 0) -> socket.socket:
    """A socket that has sent one POST of `body` (and reads only what the test reads)."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", server.port))
    data = json.dumps(body).encode()
    s.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
              b"%sContent-Length: %d\r\n\r\n%s" % (path.encode(), server.port,
                                                    auth_line(server), len(data), data))
    return s


def auth_line(server) -> bytes:
    return b"Authorization: Bearer %s\r\n" % token_of(server).encode()


def auth(server) -> dict:
    return {"Authorization": f"Bearer {token_of(server)}"}


def read_until_closed(s: socket.socket, timeout: float = 30) -> tuple[bytes, bool]:
    """What `s` receives until the server ends the response (a chunked body's last chunk)
    or closes the connection; (data, closed)."""
    s.settimeout(timeout)
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def is_closed_by_server(s: socket.socket, timeout: float = 30) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(4096) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_waiting_completions_hold_no_worker_thread(serve, trained, monkeypatch):
    n = 48              # more than the 40 threads anyio lends the routes' blocking calls
    server = serve(trained, limits=Limits(concurrency=1, queue_timeout=120))
    wait_loaded(server)
    arrived, count, lock = threading.Event(), [0], threading.Lock()
    real_start = api.start_generation

    async def counted(service, req):
        with lock:
            count[0] += 1
            if count[0] == n:
                arrived.set()
        return await real_start(service, req)
    monkeypatch.setattr(api, "start_generation", counted)
    slots = server.service.slots
    assert slots.acquire(0)                      # the one slot is busy: every request waits
    with ThreadPoolExecutor(n) as ex:
        futures = [ex.submit(httpx.post, server.url + "/v1/completions", timeout=120,
                             json={"prompt": "x", "max_tokens": 1}, headers=auth(server))
                   for _ in range(n)]
        try:
            assert arrived.wait(60), f"only {count[0]} of {n} completions arrived"
            # routes that read the store on a worker thread answer while all of them wait
            assert httpx.get(server.url + "/api/targets", timeout=10,
                             headers=auth(server)).status_code == 200
            assert httpx.get(server.url + "/api/status", timeout=10,
                             headers=auth(server)).status_code == 200
        finally:
            slots.release()
        assert [f.result().status_code for f in futures] == [200] * n


def test_a_generation_holds_its_slot_no_longer_than_the_request_timeout(serve, trained,
                                                                       script_ids):
    server = serve(trained, limits=Limits(concurrency=1, request_timeout=2))
    ckpt = wait_loaded(server)
    stop = threading.Event()

    def slow(prompt_ids, max_new_tokens, **kw):
        for _ in range(max_new_tokens):         # a token per 50 ms: 1000 take 50 s
            yield ord("a")
            if stop.wait(0.05):
                return
    script_ids(server.service.batcher(ckpt), slow)
    sock = raw_post(server, "/v1/completions",
                    {"prompt": "x", "max_tokens": 1000, "stream": True})
    try:
        sock.settimeout(30)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")     # then it stops reading
        slots = server.service.slots
        assert slots.acquire(30), "a generation kept its slot past the request timeout"
        slots.release()
        rest, closed = read_until_closed(sock)
        assert not closed and b'"finish_reason": "cancelled"' in rest and b"[DONE]" in rest
    finally:
        stop.set()
        sock.close()


def test_a_client_that_stops_reading_is_dropped_and_its_generation_ends(serve, trained,
                                                                       script_ids):
    server = serve(trained, limits=Limits(concurrency=1, request_timeout=600, send_timeout=1,
                                          max_tokens=10 ** 6))
    ckpt = wait_loaded(server)
    # small socket buffers (accepted sockets inherit the listening socket's) fill sooner
    server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stop, ended = threading.Event(), threading.Event()

    def endless(prompt_ids, max_new_tokens, **kw):
        try:
            while not stop.wait(0.001):         # a token per millisecond, for ever
                yield ord("a")
        finally:
            ended.set()
    script_ids(server.service.batcher(ckpt), endless)
    sock = raw_post(server, "/v1/completions",
                    {"prompt": "x", "max_tokens": 10 ** 6, "stream": True}, rcvbuf=4096)
    try:
        sock.settimeout(30)
        assert sock.recv(64).startswith(b"HTTP/1.1 200")       # then it stops reading
        slots = server.service.slots
        assert slots.acquire(60), "a client that stopped reading kept its slot"
        slots.release()
        assert ended.wait(30), "the generation of a dropped client went on"
        data, closed = read_until_closed(sock)   # what was buffered, then the end
        assert closed and b"[DONE]" not in data
    finally:
        stop.set()
        sock.close()


def test_slow_request_heads_are_cut_off_and_cannot_crowd_out_a_request(serve, trained):
    server = serve(trained, limits=Limits(read_timeout=1, max_connections=16))
    wait_loaded(server)
    partial = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"       # no blank line: no head
    socks = []
    try:
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(partial)
            socks.append(s)
        # a request sent at once gets in: the oldest unfinished heads make room for it
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        assert len(server._uv.server_state.connections) <= 16
        assert all(is_closed_by_server(s) for s in socks)
        # a head dripped in a byte per 100 ms is cut off at the deadline, not extended
        drip = socket.create_connection(("127.0.0.1", server.port))
        socks.append(drip)
        drip.settimeout(0.1)
        closed = False
        for byte in partial + b"X-Slow: " + b"a" * 1000:     # 100 s of bytes
            try:
                drip.sendall(bytes([byte]))
                closed = drip.recv(1) == b""
            except socket.timeout:
                continue
            except OSError:
                closed = True
            if closed:
                break
        assert closed, "a dripping request head kept its connection"
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    finally:
        for s in socks:
            s.close()


def test_a_body_sent_too_slowly_gets_408(serve, trained):
    server = serve(trained, limits=Limits(read_timeout=1))
    s = socket.create_connection(("127.0.0.1", server.port))
    try:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s"
                  b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                  b'{"prompt": ' % (server.port, auth_line(server)))           # 11 bytes of 100, then nothing
        data, closed = read_until_closed(s)
        assert data.startswith(b"HTTP/1.1 408") and b"took over 1 s" in data
    finally:
        s.close()
