"""The rules of a local server, as ASGI middleware, and its token.

- `SecurityHeaders` (outermost): every response forbids framing (`X-Frame-Options: DENY`,
  CSP `frame-ancestors 'none'`), loads nothing but this server's own files (CSP
  `default-src 'self'`), is never sniffed as another type and sends no Referer.
- `HostGuard`: a request whose Host header is not the bound address, a loopback name or an
  `--allowed-host` is refused with 421 (a DNS-rebinding page reaches the server under its
  own host name, which is not on the list).
- `AccessGuard` (inside CORS), for state-changing requests (POST, PUT, PATCH, DELETE):
  an Origin must be one of this server's own origins, compared whole (scheme, host and
  port: the bound address and the loopback spellings of it, the --allowed-host names, on
  the server's port) or a `--cors` origin, else 403; a `Sec-Fetch-Site` of `cross-site` or
  `same-site` (a page on another port of this host is same-site, and browsers send it the
  cookies of this one) is refused the same way unless the Origin is a `--cors` one; and a
  body must be `application/json`, else 415 (a page may send text/plain or a form to any
  port without asking first, never JSON). Then the token: every request but `/health`
  needs `Authorization: Bearer TOKEN` or the dashboard's cookie, else 401. Opening
  `/?token=TOKEN` sets that cookie (`cllm_token_<port>`: cookies are not kept apart by
  port; HttpOnly, SameSite=Strict, Path=/, Secure under TLS) and answers 303 to the same
  page without the token, so it leaves the address bar and the history.
- CORS is Starlette's middleware, added only with `--cors ORIGIN` (see app.py).

The token is required on loopback too (`--auth none` turns that off there, never beyond):
given with --token-file or $CLLM_TOKEN (--token works, with a warning: `ps` shows it), else
the data directory's own (`data_dir_token`: DATA_DIR/cllm.token, made on first use, mode
0600, as Jupyter keeps its token). Binding beyond loopback also needs TLS (--tls-cert,
--tls-key) or an explicit --allow-http (`check_binding`, before the server starts).
uvicorn's access log shows `token=...` as `token=REDACTED` (`RedactToken`). Errors are the
API's JSON body: {"error": {"message", "type"}}.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import ssl
import tempfile
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit

from engine.errors import ConfigError

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
OPEN_PATHS = frozenset({"/health"})
AUTH_MODES = ("token", "none")
TOKEN_FILE = "cllm.token"
# what a token may hold: a cookie value and a header carry these as they are
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")
DEFAULT_PORTS = {"http": 80, "https": 443}
SECURITY_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'self'; base-uri 'none'; form-action 'self'; "
                                 b"frame-ancestors 'none'; object-src 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


# ------------------------------------------------------------------------------ the token

def cookie_name(port: int) -> str:
    """The dashboard's cookie: one per port, since browsers send a host's cookies to all
    of its ports."""
    return f"cllm_token_{port}"


def check_token(token: str, where: str) -> str:
    token = token.strip()
    if not TOKEN_CHARS.fullmatch(token):
        raise ConfigError(f"the token from {where} is empty or holds characters a cookie "
                          "cannot carry",
                          "use letters, digits and . _ ~ + / = - only (e.g. python -c "
                          "'import secrets; print(secrets.token_urlsafe(32))')")
    return token


def token_path(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN_FILE


def read_token_file(path: Path) -> str:
    """The token in `path` (--token-file: any file the user names, links followed)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        mode = Path(path).stat().st_mode
    except OSError as e:
        raise ConfigError(f"cannot read the token file {path}: {e.strerror}",
                          "check the --token-file path") from None
    if mode & 0o077:
        log.warning("the token file %s is readable by other users (chmod 600 %s)", path, path)
    return check_token(text, str(path))


def data_dir_token(data_dir: Path) -> str:
    """The data directory's token: read from DATA_DIR/cllm.token, or made on first use (32
    random bytes, URL-safe) and written there with mode 0600, whole (a second process at
    the same moment reads the first one's). A link there, or a file of another user, is
    refused: who planted it would know the token."""
    path = token_path(data_dir)
    if not os.path.lexists(path):
        _create_token_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise ConfigError(f"cannot read the token file {path}: {e.strerror}",
                          f"remove {path} (a new token is made), or pass --token-file "
                          "FILE") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise ConfigError(f"the token file {path} belongs to another user",
                              "remove it (a new token is made), or pass --token-file FILE")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
            log.warning("the token file %s was readable by other users: now 0600", path)
        text = os.read(fd, 4096).decode("utf-8", "replace")
    finally:
        os.close(fd)
    return check_token(text, str(path))


def _create_token_file(path: Path) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{TOKEN_FILE}.", dir=path.parent)   # 0600
    except OSError as e:
        raise ConfigError(f"cannot create the token file {path}: {e.strerror}",
                          "pass --token-file FILE or set $CLLM_TOKEN, or serve a data "
                          "directory you can write to") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)        # whole or not at all; never over another's
        except FileExistsError:
            pass                      # another process made it first: that one counts
    finally:
        os.unlink(tmp)


def server_token(cfg, data_dir: Path) -> Optional[str]:
    """The token a server requires: none with --auth none, else the one given, else the
    data directory's (made on first use)."""
    if cfg.auth == "none":
        return None
    return cfg.token or data_dir_token(data_dir)


def check_binding(cfg) -> None:
    """Refuse, before anything starts, what would expose the server: beyond loopback it
    needs its token and TLS (or an explicit --allow-http)."""
    host = cfg.host
    if cfg.auth not in AUTH_MODES:
        raise ConfigError(f"--auth {cfg.auth!r} is not one of {', '.join(AUTH_MODES)}",
                          "e.g. --auth token")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together", "pass both, or neither")
    if cfg.auth == "none" and cfg.token:
        raise ConfigError("--auth none and a token contradict each other",
                          "drop --auth none, or the token")
    if not is_loopback(host):
        if cfg.auth == "none":
            raise ConfigError(f"binding to {host} makes the server reachable from other "
                              "machines; that needs a token, not --auth none",
                              "drop --auth none (the token is made for you), or bind to "
                              "127.0.0.1")
        if not cfg.tls_cert and not cfg.allow_http:
            raise ConfigError(f"binding to {host} without TLS sends the token and every "
                              "answer in clear over the network",
                              "pass --tls-cert FILE --tls-key FILE, or --allow-http (a "
                              "trusted network, or a TLS proxy in front)")
    if cfg.tls_cert:
        tls_context(cfg)


def tls_context(cfg) -> ssl.SSLContext:
    """The server's TLS context (a bad certificate or key is a one-line error now, not a
    failure of the server thread later)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot use the TLS certificate {cfg.tls_cert} with the key "
                          f"{cfg.tls_key}: {getattr(e, 'strerror', None) or e}",
                          "pass PEM files: the certificate (chain) and its private key") from None
    return ctx


class RedactToken(logging.Filter):
    """uvicorn's access log with `token=...` in a query shown as `token=REDACTED`."""

    PATTERN = re.compile(r"([?&]token=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1REDACTED", a) if isinstance(a, str)
                                else a for a in record.args)
        return True


def redact_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactToken) for f in access.filters):
        access.addFilter(RedactToken())


# --------------------------------------------------------------------- hosts and origins

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


Origin = tuple[str, str, int]      # scheme, host (lower case, no brackets), port


def parse_origin(value: str) -> Optional[Origin]:
    """An Origin header as (scheme, host, port), the port filled in for the scheme; None
    for "null" or anything that is not an http(s) origin."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if (parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/")
            or parts.query or parts.fragment or parts.username or parts.password):
        return None
    return parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme]


def own_origins(hosts: Iterable[str], port: int, scheme: str = "http") -> frozenset[Origin]:
    """The origins of this server's own pages: each name it answers for, on its port."""
    return frozenset((scheme, h.lower().strip("[]"), port) for h in hosts)


# ------------------------------------------------------------------------- the middleware

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


def _cookie(scope, name: str) -> Optional[str]:
    """The value of cookie `name` in the request (every Cookie header; others' cookies
    that do not parse are skipped, not an error)."""
    for k, v in scope.get("headers", ()):
        if k != b"cookie":
            continue
        for pair in v.decode("latin-1").split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key == name:
                return value.strip().strip('"')
    return None


def _has_body(scope) -> bool:
    length = _header(scope, b"content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return _header(scope, b"transfer-encoding") is not None


class SecurityHeaders:
    """Every HTTP response gets SECURITY_HEADERS (unless it set one itself)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", ())}
                message["headers"] = [*message.get("headers", ()),
                                      *(h for h in SECURITY_HEADERS if h[0] not in have)]
            await send(message)
        await self.app(scope, receive, send_with_headers)


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
    """Where a state-changing request may come from and what it must send (403, 415), and
    the token when there is one (401); `/?token=` logs a browser in (303)."""

    def __init__(self, app, origins: frozenset[Origin], token: Optional[str], port: int,
                 cors_origins: Iterable[str] = (), secure: bool = False) -> None:
        self.app, self.origins, self.token = app, origins, token
        self.cookie, self.secure = cookie_name(port), secure
        self.cors = frozenset(o for o in map(parse_origin, cors_origins) if o is not None)

    def refusal(self, scope) -> Optional[tuple[int, str, str]]:
        """Why a state-changing request is refused before its token is looked at: (status,
        message, type), or None."""
        origin = _header(scope, b"origin")
        parsed = parse_origin(origin) if origin is not None else None
        if parsed is not None and parsed in self.cors:
            return None                       # a page the user allowed with --cors
        if origin is not None and parsed not in self.origins:
            return (403, f"requests from origin {origin!r} are refused (a page of this "
                    "server has its origin; start it with --cors ORIGIN to allow another)",
                    "permission_error")
        site = (_header(scope, b"sec-fetch-site") or "").strip().lower()
        if site in ("cross-site", "same-site"):
            return (403, f"requests a browser marks Sec-Fetch-Site: {site} are refused "
                    "(start the server with --cors ORIGIN to allow a page)", "permission_error")
        return None

    def json_refusal(self, scope) -> Optional[str]:
        if scope["method"] == "DELETE" and not _has_body(scope):
            return None
        kind = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
        if kind != "application/json":
            return (f"{scope['method']} {scope['path']} takes Content-Type: application/json"
                    f" (not {kind or 'none'})")
        return None

    def _matches(self, given: Optional[str]) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def token_ok(self, scope) -> bool:
        auth = _header(scope, b"authorization") or ""
        if auth[:7].lower() == "bearer " and self._matches(auth[7:].strip()):
            return True
        return self._matches(_cookie(scope, self.cookie))

    async def log_in(self, scope, send, given: str) -> None:
        """`GET /?token=TOKEN`: the cookie, and 303 to the page without the token."""
        if self.token is not None and not self._matches(given):
            await send_error(send, 401, "wrong token in the link: `cllm token` prints the "
                             "right one", "authentication_error")
            return
        rest = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                             keep_blank_values=True) if k != "token"]
        location = scope["path"] + (f"?{urlencode(rest)}" if rest else "")
        headers = [(b"location", location.encode("latin-1")), (b"cache-control", b"no-store"),
                   (b"content-length", b"0")]
        if self.token is not None:
            cookie = (f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                      + ("; Secure" if self.secure else ""))
            headers.append((b"set-cookie", cookie.encode("latin-1")))
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method in UNSAFE_METHODS:
            refused = self.refusal(scope)
            if refused is not None:
                await send_error(send, *refused)
                return
        if scope["path"] == "/" and method in ("GET", "HEAD"):
            given = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                   keep_blank_values=True)).get("token")
            if given is not None:
                await self.log_in(scope, send, given)
                return
        if (self.token is not None and scope["path"] not in OPEN_PATHS
                and not self.token_ok(scope)):
            await send_error(send, 401, "missing or wrong token: send 'Authorization: "
                             "Bearer TOKEN' (`cllm token` prints it) or open the dashboard "
                             "link `cllm serve` printed", "authentication_error",
                             [(b"www-authenticate", b"Bearer")])
            return
        if method in UNSAFE_METHODS:
            wrong_type = self.json_refusal(scope)
            if wrong_type is not None:
                await send_error(send, 415, wrong_type, "invalid_request_error")
                return
        await self.app(scope, receive, send)
