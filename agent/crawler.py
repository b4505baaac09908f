"""The crawler: source trees and web pages in, documents (or recorded refusals) out.

(a) `Crawler.walk(folder)`: a recursive walk honouring include/exclude patterns and
    `.gitignore` files, with binary detection and the per-file size cap of agent.text.
(b) `Crawler.crawl(url)`: a breadth-first HTTP/HTTPS crawl that obeys robots.txt, sends an
    identifying user agent, waits a per-host delay between requests, stops at depth and page
    limits, times out, caps bodies, retries 5xx/408/429 with backoff (honouring Retry-After),
    follows at most 5 redirects and re-checks each hop, canonicalises URLs and persists
    their dedupe in the store, and extracts the main text of HTML pages with trafilatura.

The SSRF guard refuses loopback, private, link-local, CGNAT, multicast, reserved and
IPv4-mapped forms of those addresses on every hop, twice: before a request, with a reason
recorded, and again at connect time on the address actually dialled (so DNS rebinding does
not get through). `allow_private_hosts=True` lifts it; `allow_networks` lifts it for
listed networks only.

Everything interruptible waits on `stop_event` (politeness delays and backoff included).
The crawler does not schedule re-crawls and does not run JavaScript.
"""
from __future__ import annotations

import email.utils
import ipaddress
import logging
import re
import socket
import threading
import time
import urllib.robotparser
from collections import Counter, deque
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Iterable, Iterator
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

import httpcore
import httpx

from agent.ingest import Ingestor
from agent.paths import PathFilter, file_uri, walk_files
from agent.text import DEFAULT_MAX_FILE_BYTES, Refused, decode_text
from engine.errors import CllmError

if TYPE_CHECKING:  # pragma: no cover
    from store import Store

log = logging.getLogger(__name__)

USER_AGENT = "CrystallineCLLM/0.1 (continuous-learning crawler; obeys robots.txt)"
ROBOTS_AGENT = "CrystallineCLLM"  # the token robots.txt rules are matched against
MAX_REDIRECTS = 5
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))
HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/plain", "text/markdown", "text/x-markdown", "text/x-rst", "text/csv")
# statuses in fetched_urls that mean "handled: do not fetch again". Transient failures ("failed")
# and policy outcomes ("refused", "disallowed": options and robots.txt can change) are retried;
# "queued" marks links found but not fetched yet (the persisted frontier).
FINAL_STATUSES = frozenset({"fetched", "duplicate", "skipped", "error"})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class CrawlError(CllmError):
    """A crawl cannot start (bad target or option)."""


class Interrupted(Exception):
    """The stop event was set."""


class _HostRefused(Refused):
    """The SSRF guard refused an address."""


# --- the SSRF guard -------------------------------------------------------------------


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `ip` is not a public address to crawl, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            inner = address_problem(ip.ipv4_mapped)
            return f"IPv4-mapped {inner}" if inner else None
        if ip in _NAT64:
            inner = address_problem(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
            return f"NAT64 {inner}" if inner else None
        if ip.sixtofour is not None and address_problem(ip.sixtofour):
            return "6to4 address of a non-public IPv4 address"
    if ip.is_loopback:
        return f"loopback address {ip}"
    if ip.is_link_local:
        return f"link-local address {ip}"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return f"carrier-grade NAT address {ip}"
    if ip.is_unspecified:
        return f"unspecified address {ip}"
    if ip.is_multicast:
        return f"multicast address {ip}"
    if ip.is_private:
        return f"private address {ip}"
    if ip.is_reserved or not ip.is_global:
        return f"non-public address {ip}"
    return None


@dataclass(frozen=True)
class HostPolicy:
    """Which addresses may be dialled: public ones, plus `allow_networks`, or all."""

    allow_private: bool = False
    allow_networks: tuple = ()

    @classmethod
    def build(cls, allow_private: bool = False, allow_networks: Iterable[str] = ()) -> "HostPolicy":
        try:
            nets = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)
        except ValueError as e:
            raise CrawlError(f"bad network in allow_networks: {e}", hint="use CIDR, e.g. 10.1.0.0/16") from None
        return cls(allow_private, nets)

    def check_ip(self, ip) -> str | None:
        if self.allow_private or any(ip in n for n in self.allow_networks if n.version == ip.version):
            return None
        return address_problem(ip)

    def resolve(self, host: str, port: int) -> list:
        """Every address `host` resolves to, after checking each; raises _HostRefused."""
        host = host.strip("[]")
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as e:
                raise Refused(f"cannot resolve host {host!r}: {e}") from None
            ips = list(dict.fromkeys(ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos))
        for ip in ips:
            problem = self.check_ip(ip)
            if problem:
                raise _HostRefused(f"refused by the SSRF guard: {host} is a {problem} "
                                   "(pass --allow-private-hosts to crawl it)")
        return ips


class _GuardedBackend(httpcore.SyncBackend):
    """Connects only to addresses the policy allows, and to exactly the address checked."""

    def __init__(self, policy: HostPolicy) -> None:
        self.policy = policy

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            ips = self.policy.resolve(host, port)
        except Refused as r:
            raise httpcore.ConnectError(r.reason) from None
        last: Exception | None = None
        for ip in ips:
            try:
                sock = socket.create_connection((str(ip), port), timeout,
                                                source_address=None if local_address is None else (local_address, 0))
            except socket.timeout as e:
                last = httpcore.ConnectTimeout(str(e))
                continue
            except OSError as e:
                last = httpcore.ConnectError(str(e))
                continue
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return httpcore._backends.sync.SyncStream(sock)
        raise last or httpcore.ConnectError(f"no address for {host}")


def guarded_transport(policy: HostPolicy) -> httpx.HTTPTransport:
    """An httpx transport whose every connection goes through the SSRF guard.

    httpx builds its httpcore pool privately; we rebuild it with our network backend (the
    guard test in tests/test_crawler.py fails if that ever stops working).
    """
    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(),
                                              network_backend=_GuardedBackend(policy))
    return transport


# --- URLs -----------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?")  # after IDNA; no spaces, controls, %
_UNRESERVED = re.compile(r"%(2[DdEe]|3[0-9]|4[1-9A-Fa-f]|5[0-9Aa]|5[Ff]|6[1-9A-Fa-f]|7[0-9Aa]|7[Ee])")


def canonical_url(url: str, base: str | None = None) -> str:
    """The form URLs are deduplicated by; raises Refused for what we never fetch.

    Lower-case scheme and host (IDNA), no default port, no fragment, "/" for an empty
    path, dot segments removed, percent-escapes upper-cased and unreserved ones decoded.
    Only http and https; no credentials in URLs.
    """
    try:
        if base is not None:
            url = urljoin(base, url.strip())
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:  # "http://[::1", a port out of range, ...
        raise Refused(f"malformed URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise Refused(f"scheme {scheme or '(none)'!r} not allowed: only http and https")
    if parts.username is not None or parts.password is not None:
        raise Refused("URL with credentials refused")
    host = parts.hostname or ""
    if not host:
        raise Refused("URL without a host")
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = False
        try:
            host = host.rstrip(".").encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise Refused(f"invalid host name {host!r}") from None
        if not _HOST_NAME.fullmatch(host):
            raise Refused(f"invalid host name {host!r}")
    if is_ip and ":" in host:
        host = f"[{ipaddress.ip_address(host).compressed}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    try:
        path = _remove_dot_segments(_norm_escapes(parts.path) or "/")
        query = _norm_escapes(parts.query)
    except UnicodeError:  # lone surrogates cannot be percent-encoded
        raise Refused("malformed URL: characters that UTF-8 cannot encode") from None
    return urlunsplit((scheme, netloc, path, query, ""))


def _norm_escapes(s: str) -> str:
    s = quote(s, safe="!#$%&'()*+,/:;=?@[]~")  # escape spaces and non-ASCII, keep escapes
    s = re.sub(r"%[0-9a-fA-F]{2}", lambda m: m.group(0).upper(), s)
    return _UNRESERVED.sub(lambda m: unquote(m.group(0)), s)


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    for seg in path.split("/")[1:] if path.startswith("/") else path.split("/"):
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    result = "/" + "/".join(out)
    if path.endswith(("/.", "/..")) and not result.endswith("/"):
        result += "/"
    return result


def _origin(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}"


# --- HTML -----------------------------------------------------------------------------


class _LinkParser(HTMLParser):
    """Links, <base href>, robots meta and charset meta; tolerant of broken markup."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.base: str | None = None
        self.nofollow = self.noindex = False

    def handle_starttag(self, tag, attrs):
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag in ("a", "area") and a.get("href"):
            if "nofollow" not in a.get("rel", "").lower().split():
                self.links.append(a["href"])
        elif tag == "base" and a.get("href") and self.base is None:
            self.base = a["href"]
        elif tag == "meta" and a.get("name", "").lower() in ("robots", ROBOTS_AGENT.lower()):
            content = a.get("content", "").lower()
            self.nofollow |= "nofollow" in content or "none" in content
            self.noindex |= "noindex" in content or "none" in content


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


def extract_main_text(html: str) -> str | None:
    """The main text of an HTML page (trafilatura), None when there is none."""
    import trafilatura

    try:
        return trafilatura.extract(html, include_comments=False, include_tables=True, favor_recall=True)
    except Exception as e:  # trafilatura on pathological markup: a refusal, not a crash
        log.debug("trafilatura failed: %r", e)
        return None


# --- the crawler ----------------------------------------------------------------------


@dataclass
class CrawlReport:
    """What one walk or crawl did: counts by outcome, bytes read, and each item."""

    counts: Counter = field(default_factory=Counter)
    bytes_read: int = 0
    items: list = field(default_factory=list)  # (uri, outcome, reason)

    def add(self, uri: str, outcome: str, reason: str | None = None, nbytes: int = 0) -> None:
        self.counts[outcome] += 1
        self.bytes_read += nbytes
        self.items.append((uri, outcome, reason))

    def merge(self, other: "CrawlReport") -> None:
        self.counts.update(other.counts)
        self.bytes_read += other.bytes_read
        self.items.extend(other.items)


@dataclass
class _Response:
    url: str  # canonical URL of the final hop
    status: int
    content_type: str
    charset: str | None
    body: bytes
    location: str | None = None  # redirects
    retry_after: str | None = None  # 429 / 503


class _FetchFailed(Exception):
    def __init__(self, reason: str, status: str = "failed", http_status: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.status, self.http_status = reason, status, http_status


class Crawler:
    """Walks source trees and crawls http(s) sites into the store.

    One Crawler belongs to one thread. `stop_event` interrupts walks, crawls and waits.
    Use as a context manager, or call close(), to release the HTTP connections.
    """

    def __init__(self, store: "Store", *, allow_private_hosts: bool = False,
                 allow_networks: Iterable[str] = (), max_pages: int = 100, max_depth: int = 2,
                 delay: float = 1.0, timeout: float = 10.0, max_body_bytes: int = 5 * 1024 * 1024,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, retries: int = 3, backoff: float = 1.0,
                 max_retry_after: float = 120.0, max_redirects: int = MAX_REDIRECTS,
                 user_agent: str = USER_AGENT, stay_on_host: bool = True,
                 stop_event: threading.Event | None = None, ingestor: Ingestor | None = None,
                 include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
                 follow_symlinks: bool = False) -> None:
        if max_pages < 1 or max_depth < 0 or delay < 0 or timeout <= 0 or retries < 0:
            raise CrawlError("max_pages >= 1, max_depth >= 0, delay >= 0, timeout > 0, retries >= 0 required",
                             hint="check the crawl options")
        if max_redirects > MAX_REDIRECTS:
            raise CrawlError(f"at most {MAX_REDIRECTS} redirects", hint=f"use --max-redirects <= {MAX_REDIRECTS}")
        self.store = store
        self.policy = HostPolicy.build(allow_private_hosts, allow_networks)
        self.max_pages, self.max_depth = max_pages, max_depth
        self.delay, self.timeout = delay, timeout
        self.max_body_bytes = max_body_bytes
        self.retries, self.backoff, self.max_retry_after = retries, backoff, max_retry_after
        self.max_redirects = max_redirects
        self.user_agent = user_agent
        self.stay_on_host = stay_on_host
        self.stop_event = stop_event or threading.Event()
        self.ingestor = ingestor or Ingestor(store, max_file_bytes=max_file_bytes,
                                             follow_symlinks=follow_symlinks)
        self.path_filter = PathFilter(include, exclude)
        self.follow_symlinks = follow_symlinks
        self._client: httpx.Client | None = None
        self._robots: dict[str, urllib.robotparser.RobotFileParser | str] = {}
        self._next_request: dict[str, float] = {}  # host -> monotonic time of its next request
        self._crawl_delay: dict[str, float] = {}

    def __enter__(self) -> "Crawler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(transport=guarded_transport(self.policy), follow_redirects=False,
                                        headers={"User-Agent": self.user_agent},
                                        timeout=httpx.Timeout(self.timeout), trust_env=False)
        return self._client

    # (a) source trees
    def walk(self, folder: str, *, source: str | None = None, target_id: int | None = None,
             gitignore: bool = True) -> CrawlReport:
        """Ingest every eligible file under `folder` once."""
        import os

        report = CrawlReport()
        folder = os.path.abspath(folder)
        if not os.path.isdir(folder):
            raise CrawlError(f"{folder} is not a folder", hint="pass an existing folder or an http(s) URL")
        source = source or folder
        with self.ingestor.batch():
            for item in walk_files(folder, self.path_filter, follow_symlinks=self.follow_symlinks,
                                   gitignore=gitignore, stop_event=self.stop_event):
                if item.reason is not None:
                    res = self.ingestor.refuse(file_uri(item.path), item.reason, source=source,
                                               target_id=target_id)
                else:
                    res = self.ingestor.ingest_file(item.path, source=source, target_id=target_id)
                report.add(res.uri, res.outcome, res.reason, res.size_bytes or 0)
        if self.stop_event.is_set():
            report.counts["interrupted"] += 1
        return report

    # (b) the web
    def crawl(self, url: str, *, source: str | None = None, target_id: int | None = None) -> CrawlReport:
        """Breadth-first crawl from `url` within the depth and page limits."""
        report = CrawlReport()
        try:
            start = canonical_url(url)
        except Refused as r:
            raise CrawlError(f"cannot crawl {url!r}: {r.reason}", hint="pass an http(s) URL") from None
        source = source or _origin(start)
        # links found by an earlier run that stopped (page limit, interrupt, crash) come back
        frontier: deque[tuple[str, int]] = deque([(start, 0)] + self._queued_under(start))
        queued = {u for u, _ in frontier}
        pages = 0
        try:
            while frontier and pages < self.max_pages:
                if self.stop_event.is_set():
                    raise Interrupted
                url_, depth = frontier.popleft()
                if self._seen(url_):
                    report.add(url_, "seen")
                    continue
                pages += 1
                links = self._crawl_one(url_, report, source=source, target_id=target_id)
                if depth >= self.max_depth:
                    continue
                new = []
                for link in links:
                    if link not in queued and (not self.stay_on_host or
                                               urlsplit(link).hostname == urlsplit(start).hostname):
                        queued.add(link)
                        frontier.append((link, depth + 1))
                        new.append(link)
                self._remember_queued(new, depth + 1)
        except Interrupted:
            report.counts["interrupted"] += 1
        if frontier and pages >= self.max_pages:
            log.info("page limit %d reached; %d URLs left unvisited", self.max_pages, len(frontier))
            report.counts["left_unvisited"] += len(frontier)
        return report

    def _crawl_one(self, url: str, report: CrawlReport, *, source: str, target_id: int | None) -> list[str]:
        """Fetch, extract, store and record one URL; returns the links to follow."""
        try:
            resp = self._fetch(url)
        except _FetchFailed as f:
            doc_id = None
            if f.status == "skipped":  # the content itself was refused: a document row says why
                doc_id = self.ingestor.refuse(url, f.reason, source=source, target_id=target_id).document_id
            self._record(url, f.status, http_status=f.http_status, reason=f.reason, document_id=doc_id)
            report.add(url, f.status, f.reason)
            return []
        final = resp.url
        try:
            text, encoding, links, noindex = self._extract(resp)
        except Refused as r:
            res = self.ingestor.refuse(final, r.reason, source=source, size_bytes=len(resp.body), target_id=target_id)
            self._record(url, "skipped", http_status=resp.status, reason=r.reason, document_id=res.document_id,
                         also=final)
            report.add(final, "skipped", r.reason, len(resp.body))
            return []
        if noindex:
            reason = "robots meta tag says noindex"
            self._record(url, "skipped", http_status=resp.status, reason=reason, also=final)
            report.add(final, "skipped", reason, len(resp.body))
            return links
        res = self.ingestor.ingest_text(final, text, source=source, encoding=encoding,
                                        target_id=target_id, size_bytes=len(resp.body))
        status = {"added": "fetched", "unchanged": "fetched", "restored": "fetched"}.get(res.outcome, res.outcome)
        if res.outcome == "refused":
            status = "skipped"
        self._record(url, status, http_status=resp.status, reason=res.reason, document_id=res.document_id,
                     also=final)
        report.add(final, status, res.reason, len(resp.body))
        return links

    def _extract(self, resp: _Response) -> tuple[str, str, list[str], bool]:
        ctype = resp.content_type
        if ctype in HTML_TYPES or (not ctype and resp.body.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html"))):
            declared = resp.charset
            if declared is None:
                m = _META_CHARSET.search(resp.body[:4096])
                declared = m.group(1).decode("ascii") if m else None
            # HTML without a usable charset: the configured fallback, else cp1252 (what
            # browsers take for windows-1252 / ISO-8859-1 pages)
            decoded = decode_text(resp.body, declared=declared,
                                  fallback=self.ingestor.fallback_encoding or "cp1252")
            parser = _LinkParser()
            try:
                parser.feed(decoded.text)
                parser.close()
            except Exception as e:  # html.parser is tolerant; this is belt and braces
                log.debug("link parser gave up on %s: %r", resp.url, e)
            base = resp.url
            if parser.base:
                try:
                    base = canonical_url(parser.base, resp.url)
                except Refused:
                    pass
            links = []
            if not parser.nofollow:
                for href in parser.links:
                    try:
                        links.append(canonical_url(href, base))
                    except Refused:
                        continue  # mailto:, javascript:, ... are not inputs
            text = extract_main_text(decoded.text)
            if not text or not text.strip():
                raise Refused("no main text found in the HTML")
            return text, decoded.encoding, list(dict.fromkeys(links)), parser.noindex
        if ctype.startswith("text/") or not ctype:
            decoded = decode_text(resp.body, declared=resp.charset, fallback=self.ingestor.fallback_encoding)
            return decoded.text, decoded.encoding, [], False
        raise Refused(f"non-text content type {ctype}")

    # fetching
    def _fetch(self, url: str) -> _Response:
        """GET with robots, guard, delay, retries and re-checked redirects."""
        hops = [url]
        current = url
        while True:
            self._check_allowed(current)
            resp = self._request(current)
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.location or ""
                if len(hops) > self.max_redirects:
                    raise _FetchFailed(f"more than {self.max_redirects} redirects", "error", resp.status)
                try:
                    nxt = canonical_url(location, current)
                except Refused as r:
                    raise _FetchFailed(f"redirect refused: {r.reason}", "refused", resp.status) from None
                if nxt in hops:
                    raise _FetchFailed(f"redirect loop back to {nxt}", "error", resp.status)
                hops.append(nxt)
                current = nxt
                continue
            if resp.status >= 400:
                kind = "failed" if resp.status in RETRY_STATUSES else "error"
                raise _FetchFailed(f"HTTP {resp.status}", kind, resp.status)
            if resp.status in (204, 205) or not 200 <= resp.status < 300:
                raise _FetchFailed(f"HTTP {resp.status} (no content to read)", "error", resp.status)
            return resp

    def _check_allowed(self, url: str) -> None:
        parts = urlsplit(url)
        try:
            self.policy.resolve(parts.hostname or "", parts.port or _DEFAULT_PORTS[parts.scheme])
        except Refused as r:
            raise _FetchFailed(r.reason, "refused") from None
        rules = self._robots_for(url)
        if isinstance(rules, str):
            raise _FetchFailed(rules, "disallowed")
        if not rules.can_fetch(ROBOTS_AGENT, url):
            raise _FetchFailed("disallowed by robots.txt", "disallowed")

    def _robots_for(self, url: str):
        origin = _origin(url)
        if origin in self._robots:
            return self._robots[origin]
        rules: urllib.robotparser.RobotFileParser | str
        parser = urllib.robotparser.RobotFileParser(origin + "/robots.txt")
        try:
            resp = self._fetch_robots(origin + "/robots.txt")
        except _FetchFailed as f:
            # RFC 9309: an unreachable robots.txt (5xx, network) means "disallow everything"
            rules = f"robots.txt unavailable ({f.reason}): the site is treated as disallowed"
        else:
            if resp.status >= 400:
                parser.allow_all = True  # no robots.txt: everything allowed
            else:
                text = resp.body[: 512 * 1024].decode("utf-8", errors="replace")
                parser = _parse_robots(origin + "/robots.txt", text.splitlines())
                if not isinstance(parser, str):
                    delay = parser.crawl_delay(ROBOTS_AGENT)
                    if delay:
                        self._crawl_delay[urlsplit(origin).netloc] = min(float(delay), 60.0)
            rules = parser
        self._robots[origin] = rules
        return rules

    def _fetch_robots(self, url: str) -> _Response:
        current, hops = url, [url]
        while True:
            parts = urlsplit(current)
            try:
                self.policy.resolve(parts.hostname or "", parts.port or _DEFAULT_PORTS[parts.scheme])
            except Refused as r:
                raise _FetchFailed(r.reason, "refused") from None
            resp = self._request(current, cap=512 * 1024)
            if resp.status in (301, 302, 303, 307, 308):
                try:
                    nxt = canonical_url(resp.location or "", current)
                except Refused as r:
                    raise _FetchFailed(r.reason, "refused") from None
                if nxt in hops or len(hops) > self.max_redirects:
                    return _Response(current, 404, "", None, b"")  # RFC 9309: give up, allow
                hops.append(nxt)
                current = nxt
                continue
            if resp.status >= 500 or resp.status == 429:
                raise _FetchFailed(f"HTTP {resp.status}", "failed", resp.status)
            return resp

    def _request(self, url: str, cap: int | None = None) -> _Response:
        """One GET with the per-host delay and retries; redirects come back unread."""
        cap = self.max_body_bytes if cap is None else cap
        attempt = 0
        while True:
            self._wait_turn(url)
            try:
                resp = self._get_once(url, cap)
            except httpx.TimeoutException as e:
                failure = _FetchFailed(f"timed out ({type(e).__name__})", "failed")
                retry_in = self.backoff * 2 ** attempt
            except httpx.RemoteProtocolError as e:
                if "location header" in str(e).lower():  # httpx parses Location itself, and gives up
                    raise _FetchFailed(f"redirect refused: malformed URL ({e})", "refused") from None
                failure = _FetchFailed(f"network error: {e}", "failed")
                retry_in = self.backoff * 2 ** attempt
            except httpx.TransportError as e:
                failure = _FetchFailed(f"network error: {e}", "failed")
                retry_in = self.backoff * 2 ** attempt
            except httpx.HTTPError as e:  # e.g. DecodingError: a gzip body that does not inflate
                failure = _FetchFailed(f"bad response ({type(e).__name__}): {e}", "failed")
                retry_in = self.backoff * 2 ** attempt
            except httpx.InvalidURL as e:  # canonical_url should have refused it already
                raise _FetchFailed(f"malformed URL: {e}", "refused") from None
            else:
                if resp.status not in RETRY_STATUSES:
                    return resp
                failure = _FetchFailed(f"HTTP {resp.status}", "failed", resp.status)
                retry_in = self.backoff * 2 ** attempt
                if resp.retry_after is not None:
                    after = _parse_retry_after(resp.retry_after)
                    if after is not None:
                        if after > self.max_retry_after:
                            failure.reason += f" (Retry-After {after:.0f} s exceeds {self.max_retry_after:.0f} s)"
                            raise failure
                        retry_in = max(after, 0.0)
            if attempt >= self.retries:
                failure.reason += f" after {attempt + 1} attempts"
                raise failure
            attempt += 1
            log.info("retrying %s in %.2f s: %s", url, retry_in, failure.reason)
            if self.stop_event.wait(retry_in):
                raise Interrupted

    def _get_once(self, url: str, cap: int) -> _Response:
        deadline = time.monotonic() + self.timeout * 3  # whole response, against trickling servers
        with self.client.stream("GET", url) as r:
            host = urlsplit(url).netloc
            self._next_request[host] = time.monotonic() + max(self.delay, self._crawl_delay.get(host, 0.0))
            if r.status_code in (301, 302, 303, 307, 308):
                loc = r.headers.get("location")
                if not loc:
                    return _Response(url, 404, "", None, b"")
                return _Response(url, r.status_code, "", None, b"", location=loc)
            if r.status_code in RETRY_STATUSES:
                return _Response(url, r.status_code, "", None, b"", retry_after=r.headers.get("retry-after"))
            if r.status_code >= 300:
                return _Response(url, r.status_code, "", None, b"")
            ctype, _, params = r.headers.get("content-type", "").partition(";")
            ctype = ctype.strip().lower()
            charset = None
            m = re.search(r"charset\s*=\s*[\"']?([^\"';\s]+)", params, re.I)
            if m:
                charset = m.group(1)
            if ctype and not (ctype.startswith("text/") or ctype in HTML_TYPES):
                raise _FetchFailed(f"non-text content type {ctype}", "skipped", r.status_code)
            length = r.headers.get("content-length")
            if length and length.isascii() and length.isdigit() and int(length) > cap:
                raise _FetchFailed(f"body too large (Content-Length {length} > cap of {cap} bytes)",
                                   "skipped", r.status_code)
            chunks, total = [], 0
            for chunk in r.iter_bytes():
                total += len(chunk)
                if total > cap:
                    raise _FetchFailed(f"body too large (more than the cap of {cap} bytes)", "skipped",
                                       r.status_code)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("response took longer than the total time limit")
                chunks.append(chunk)
                if self.stop_event.is_set():
                    raise Interrupted
            try:
                final = canonical_url(str(r.url))
            except Refused:
                final = url
            return _Response(final, r.status_code, ctype, charset, b"".join(chunks))

    def _wait_turn(self, url: str) -> None:
        """The per-host politeness delay, interruptible by stop_event."""
        host = urlsplit(url).netloc
        wait = self._next_request.get(host, 0.0) - time.monotonic()
        if wait > 0 and self.stop_event.wait(wait):
            raise Interrupted

    # the store
    def _seen(self, url: str) -> bool:
        """Handled by an earlier run (store.urls.url_seen is true for any status; we retry some)."""
        from store.urls import get_url

        with self.store.session(read_only=True) as s:
            row = get_url(s, url)
            return row is not None and row.status in FINAL_STATUSES

    def _queued_under(self, start: str) -> list[tuple[str, int]]:
        """URLs of this origin that an earlier crawl found but did not fetch, with their depth."""
        from sqlalchemy import select

        from store.models import FetchedUrl

        with self.store.session(read_only=True) as s:
            found = s.execute(select(FetchedUrl.url, FetchedUrl.reason).where(
                FetchedUrl.status == "queued",
                FetchedUrl.url.startswith(_origin(start) + "/", autoescape=True))
                .order_by(FetchedUrl.id).limit(100_000)).all()
        out = []
        for url, reason in found:
            m = re.match(r"found at depth (\d+)", reason or "")
            depth = int(m.group(1)) if m else self.max_depth
            if url != start and depth <= self.max_depth:
                out.append((url, depth))
        return out

    def _remember_queued(self, links: list[str], depth: int) -> None:
        """Persist the frontier, so a crawl that stops early resumes instead of losing it."""
        if not links:
            return
        from store.urls import get_url, record_url

        with self.store.session() as s:
            for link in links:
                if get_url(s, link) is None:
                    record_url(s, link, status="queued", reason=f"found at depth {depth}")

    def _record(self, url: str, status: str, *, http_status: int | None = None, reason: str | None = None,
                document_id: int | None = None, also: str | None = None) -> None:
        from store.urls import record_url

        with self.store.session() as s:
            for u in dict.fromkeys([url, also or url]):
                record_url(s, u, status=status, http_status=http_status, document_id=document_id, reason=reason)
        log.info("%s %s%s", status, url, f": {reason}" if reason else "")


def _parse_robots(url: str, lines: list[str]) -> "urllib.robotparser.RobotFileParser | str":
    """Parsed rules, or the reason the site is treated as disallowed.

    RobotFileParser.parse raises ValueError on non-ASCII digits ("Crawl-delay: ²" passes
    isdigit() and fails int()): such Crawl-delay and Request-rate lines are dropped.
    """
    parser = urllib.robotparser.RobotFileParser(url)
    try:
        parser.parse(lines)
        return parser
    except ValueError:
        pass
    kept = [line for line in lines if line.isascii() or line.split("#")[0].partition(":")[0].strip().lower()
            not in ("crawl-delay", "request-rate")]
    parser = urllib.robotparser.RobotFileParser(url)
    try:
        parser.parse(kept)
    except ValueError as e:
        return f"robots.txt unreadable ({e}): the site is treated as disallowed"
    return parser


def _parse_retry_after(value: str) -> float | None:
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is true too, and float() refuses it
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    import datetime as dt

    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


def _scheme(target: str) -> str:
    try:
        return urlsplit(target).scheme.lower()
    except ValueError:  # "http://[::1": canonical_url refuses it with its reason later
        return target.partition(":")[0].lower()


def iter_targets(targets: Iterable[str]) -> Iterator[tuple[str, str]]:
    """('folder' | 'file' | 'url', target) for each CLI target; raises CrawlError."""
    import os

    for t in targets:
        if os.path.isdir(t):
            yield "folder", t
        elif os.path.isfile(t):
            yield "file", t
        elif _scheme(t) in ("http", "https"):
            yield "url", t
        else:
            raise CrawlError(f"{t!r} is neither an existing folder or file nor an http(s) URL",
                             hint="pass a folder, a file, or a URL starting with http:// or https://")
