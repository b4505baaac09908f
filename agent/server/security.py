"""The rules of a local server, as ASGI middleware.

- `HostGuard` (outermost): a request whose Host header is not the bound address, a loopback
  name or an `--allowed-host` is refused with 421 (a DNS-rebinding page reaches the server
  under its own host name, which is not on the list).
- `AccessGuard` (inside CORS): state-changing requests (POST, PUT, PATCH, DELETE) carrying an
  Origin that is not this server's own or the `--cors` origin are refused with 403; with a
  token, every request but `/health` needs `Authorization: Bearer TOKEN` (or the dashboard's
  cookie, set by opening `/?token=TOKEN`) and gets 401 without it.
- CORS is Starlette's middleware, added only with `--cors ORIGIN` (see app.py).

Binding to anything but loopback without a token is refused before the server starts
(`check_binding`). Errors are the API's JSON body: {"error": {"message", "type"}}.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from http.cookies import SimpleCookie
from typing import Iterable, Optional
from urllib.parse import parse_qs, urlsplit

from engine.errors import ConfigError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TOKEN_COOKIE = "cllm_token"
OPEN_PATHS = frozenset({"/health"})


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def check_binding(host: str, token: Optional[str]) -> None:
    """Refuse to listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"binding to {host} makes the server reachable from other machines; "
                        "that needs a token", "pass --token SECRET (clients send "
                        "'Authorization: Bearer SECRET'), or bind to 127.0.0.1")


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host names (no port) requests may name: loopback names, the bound address, the
    --allowed-host values, and for a wildcard binding this machine's name."""
    names = {n.lower() for n in LOOPBACK_NAMES}
    names.update(h.lower().strip("[]") for h in extra)
    if is_wildcard(host):
        names.add(socket.gethostname().lower())
    else:
        names.add(host.lower().strip("[]"))
    return frozenset(names)


def host_name(value: str) -> str:
    """The name part of a Host header value ("[::1]:8765" -> "::1")."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def error_body(status: int, message: str, type_: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "code": status}}).encode()


async def send_error(send, status: int, message: str, type_: str,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = error_body(status, message, type_)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> Optional[str]:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


class HostGuard:
    """Refuse requests (HTTP and WebSocket) whose Host is not one of `hosts`."""

    def __init__(self, app, hosts: frozenset[str]) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            host = _header(scope, b"host")
            if host is None or host_name(host) not in self.hosts:
                await send_error(send, 421, f"this server does not answer for host "
                                 f"{host!r}; use http://127.0.0.1 or --allowed-host",
                                 "permission_error")
                return
        await self.app(scope, receive, send)


class AccessGuard:
    """Origin check on state-changing requests, and the bearer token when there is one."""

    def __init__(self, app, hosts: frozenset[str], token: Optional[str],
                 cors_origins: Iterable[str] = ()) -> None:
        self.app, self.hosts, self.token = app, hosts, token
        self.cors = frozenset(o.rstrip("/").lower() for o in cors_origins)

    def origin_allowed(self, origin: str) -> bool:
        if origin.rstrip("/").lower() in self.cors:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and (parts.hostname or "") in self.hosts

    def token_ok(self, scope) -> bool:
        if scope["path"] == "/" and scope["method"] == "GET":   # the dashboard's link
            given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
            if given and hmac.compare_digest(given[0].encode(), self.token.encode()):
                return True
        auth = _header(scope, b"authorization") or ""
        if auth[:7].lower() == "bearer " and hmac.compare_digest(
                auth[7:].strip().encode(), self.token.encode()):
            return True
        cookie = _header(scope, b"cookie")
        if cookie:
            c = SimpleCookie()
            try:
                c.load(cookie)
            except Exception:
                return False
            if TOKEN_COOKIE in c:
                return hmac.compare_digest(c[TOKEN_COOKIE].value.encode(), self.token.encode())
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if (scope["method"] in UNSAFE_METHODS and origin is not None
                and not self.origin_allowed(origin)):
            await send_error(send, 403, f"requests from origin {origin!r} are refused "
                             "(start the server with --cors ORIGIN to allow one)",
                             "permission_error")
            return
        if self.token and scope["path"] not in OPEN_PATHS and not self.token_ok(scope):
            await send_error(send, 401, "missing or wrong token: send "
                             "'Authorization: Bearer TOKEN'", "authentication_error",
                             [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)
