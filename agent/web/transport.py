"""The crawler's HTTP transport: every connection through the SSRF guard, every byte within
the request's total deadline.

Holds `guarded_transport(policy)`, an httpx transport built from public API only: an
httpx.BaseTransport over an httpcore.ConnectionPool whose `network_backend` is ours. The
backend resolves the host through the policy (ssrf.HostPolicy.resolve: every address
checked), dials exactly an address it checked (so DNS rebinding between check and connect
does not get through), and its streams bound every connect, TLS handshake, read and write
by the deadline set with `deadline(at)` (a monotonic time, kept in a context variable, so
a status line and then one header line every half second cannot hold a fetch past it).

It decides nothing about which addresses are allowed (ssrf.py) or about retries (fetch.py).
"""
from __future__ import annotations

import contextlib
import contextvars
import select
import socket
import ssl
import time
import typing

import httpcore
import httpx

from agent.web.ssrf import HostPolicy
from agent.inputs.text import Refused

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("cllm_request_deadline",
                                                                         default=None)


@contextlib.contextmanager
def deadline(at: float | None) -> typing.Iterator[None]:
    """Within the block, connections, reads and writes end by monotonic time `at` (a
    ReadTimeout, WriteTimeout or ConnectTimeout once it passed)."""
    token = _DEADLINE.set(at)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _time_left(timeout: float | None, expired: type[Exception]) -> float | None:
    """`timeout`, shortened to what is left before the deadline; raises `expired` past it."""
    at = _DEADLINE.get()
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise expired("the request's total time limit ran out")
    return left if timeout is None else min(timeout, left)


def _timeout_reason(doing: str) -> str:
    at = _DEADLINE.get()
    if at is not None and time.monotonic() >= at:
        return "the request's total time limit ran out"
    return f"timed out {doing}"


class _GuardedStream(httpcore.NetworkStream):
    """A socket whose every operation stays within the deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        wait = _time_left(timeout, httpcore.ReadTimeout)
        try:
            self._sock.settimeout(wait)
            return self._sock.recv(max_bytes)
        except socket.timeout:
            raise httpcore.ReadTimeout(_timeout_reason("reading")) from None
        except OSError as e:
            raise httpcore.ReadError(str(e)) from None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        while buffer:
            wait = _time_left(timeout, httpcore.WriteTimeout)
            try:
                self._sock.settimeout(wait)
                n = self._sock.send(buffer)
            except socket.timeout:
                raise httpcore.WriteTimeout(_timeout_reason("writing")) from None
            except OSError as e:
                raise httpcore.WriteError(str(e)) from None
            buffer = buffer[n:]

    def close(self) -> None:
        self._sock.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        try:
            self._sock.settimeout(_time_left(timeout, httpcore.ConnectTimeout))
            sock = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname)
        except httpcore.ConnectTimeout:
            self.close()
            raise
        except socket.timeout as e:
            self.close()
            raise httpcore.ConnectTimeout(str(e) or "TLS handshake timed out") from None
        except OSError as e:  # ssl.SSLError, certificate errors included
            self.close()
            raise httpcore.ConnectError(str(e)) from None
        return _GuardedStream(sock)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "ssl_object":  # httpcore asks it for selected_alpn_protocol()
            return self._sock if isinstance(self._sock, ssl.SSLSocket) else None
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        if info == "is_readable":  # an idle pooled connection that reads is closed or broken
            return _readable(self._sock)
        return None


def _readable(sock: socket.socket) -> bool:
    if sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class GuardedBackend(httpcore.NetworkBackend):
    """Connects only to addresses the policy allows, and to exactly the address checked."""

    def __init__(self, policy: HostPolicy) -> None:
        self.policy = policy

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: typing.Iterable | None = None) -> httpcore.NetworkStream:
        try:
            ips = self.policy.resolve(host, port)
        except Refused as r:
            raise httpcore.ConnectError(r.reason) from None
        last: Exception | None = None
        for ip in ips:
            wait = _time_left(timeout, httpcore.ConnectTimeout)
            try:
                sock = socket.create_connection((str(ip), port), wait,
                                                source_address=None if local_address is None
                                                else (local_address, 0))
            except socket.timeout as e:
                last = httpcore.ConnectTimeout(str(e) or f"connecting to {ip} timed out")
                continue
            except OSError as e:
                last = httpcore.ConnectError(str(e))
                continue
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return _GuardedStream(sock)
        raise last or httpcore.ConnectError(f"no address for {host}")

    def connect_unix_socket(self, path, timeout=None, socket_options=None):  # pragma: no cover
        raise httpcore.ConnectError("the crawler does not connect to Unix sockets")

    def sleep(self, seconds: float) -> None:  # pragma: no cover - httpcore's retries are off
        # the NetworkBackend interface has it for httpcore's own retries, which the pool
        # runs with retries=0: the Fetcher retries, waiting on its stop event
        raise RuntimeError("httpcore retries are off: agent.web.fetch.Fetcher does the retrying")


_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    # most specific first: the first match maps
    (httpcore.ConnectTimeout, httpx.ConnectTimeout), (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout), (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError), (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError), (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _httpx_errors() -> typing.Iterator[None]:
    """httpcore's exceptions as httpx's (what callers of an httpx client catch)."""
    try:
        yield
    except Exception as e:
        for theirs, ours in _EXCEPTIONS:
            if isinstance(e, theirs):
                raise ours(str(e)) from e
        raise


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: typing.Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> typing.Iterator[bytes]:
        with _httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore pool that connects through GuardedBackend."""

    def __init__(self, policy: HostPolicy, ssl_context: ssl.SSLContext | None = None) -> None:
        self._pool = httpcore.ConnectionPool(ssl_context=ssl_context or httpx.create_ssl_context(),
                                             network_backend=GuardedBackend(policy))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions)
        with _httpx_errors():
            resp = self._pool.handle_request(req)
        assert isinstance(resp.stream, typing.Iterable)
        return httpx.Response(status_code=resp.status, headers=resp.headers,
                              stream=_ResponseStream(resp.stream), extensions=resp.extensions)

    def close(self) -> None:
        self._pool.close()


def guarded_transport(policy: HostPolicy, ssl_context: ssl.SSLContext | None = None) -> GuardedTransport:
    """An httpx transport whose every connection goes through the SSRF guard (TLS verified
    against the system's / certifi's roots unless another `ssl_context` is given)."""
    return GuardedTransport(policy, ssl_context)
