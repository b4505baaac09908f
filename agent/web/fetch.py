"""Fetching one URL politely and safely: the `Fetcher`.

Holds `Fetcher.fetch(url)`: a GET that checks every hop against the SSRF guard and the
site's robots.txt (fetched once per origin, with its own redirects, and its Crawl-delay
kept), waits the per-host delay, retries 5xx/408/429 and network errors with exponential
backoff (honouring Retry-After up to a limit), follows at most `max_redirects` redirects
(loops refused), caps bodies by Content-Length and while streaming (decoded bytes,
bounded while they are inflated: decoding.py; stacked or unknown content codings are
refused), refuses non-text content types before reading, and gives up when the attempts at a URL have spent one total
budget of time (connect, headers and body alike: transport.deadline). A failure is a `FetchFailed` carrying the UrlStatus to record; `Interrupted`
means the stop event was set (every wait is interruptible).

It parses neither HTML (html.py) nor URLs (urls.py), and records nothing in the store
(crawler.py does).
"""
from __future__ import annotations

import datetime as dt
import email.utils
import logging
import re
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from agent.web import robots
from agent.web.decoding import ACCEPT_ENCODING, BodyRefused, BoundedBody
from agent.web.html import HTML_TYPES
from agent.web.ssrf import HostPolicy, HostRefused
from agent.inputs.text import Refused
from agent.web.transport import deadline, guarded_transport
from agent.web.urls import canonical_url, host_port, origin
from store.models import UrlStatus

log = logging.getLogger(__name__)

USER_AGENT = "CrystallineCLLM/0.1 (continuous-learning crawler; obeys robots.txt)"
MAX_REDIRECTS = 5
MAX_BODY_BYTES = 5 * 1024 * 1024  # a page larger than this is refused (recorded)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))
ROBOTS_TTL = 24 * 3600.0  # seconds a robots.txt is kept (RFC 9309: not much over 24 hours)
ROBOTS_FAILURE_TTL = 300.0  # ... and a robots.txt that could not be reached
MIN_ATTEMPT_S = 0.05  # a retry needs at least this much of the budget left
DEADLINE_TIMEOUTS = 3  # all attempts at one URL together may take this many timeouts (against trickling servers)


class Interrupted(Exception):
    """The stop event was set."""


class FetchFailed(Exception):
    """A URL that gave no content to read: `status` is what to record for it."""

    def __init__(self, reason: str, status: str = UrlStatus.FAILED, http_status: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.status, self.http_status = reason, status, http_status


@dataclass
class Response:
    url: str  # canonical URL of the final hop
    status: int
    content_type: str
    charset: str | None
    body: bytes
    location: str | None = None  # redirects
    retry_after: str | None = None  # 429 / 503
    etag: str | None = None  # validators of a 2xx, for a conditional re-fetch
    last_modified: str | None = None

    @property
    def validators(self) -> tuple[str | None, str | None]:
        return self.etag, self.last_modified


def parse_retry_after(value: str) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), None if unreadable."""
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is true too, and float() refuses it
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


class Fetcher:
    """GETs through the SSRF guard, robots.txt, the per-host delay, retries and redirects.

    One Fetcher belongs to one thread; close() releases its HTTP connections.
    """

    def __init__(self, policy: HostPolicy, *, stop_event: threading.Event, user_agent: str = USER_AGENT,
                 delay: float = 1.0, timeout: float = 10.0, max_body_bytes: int = MAX_BODY_BYTES,
                 retries: int = 3, backoff: float = 1.0, max_retry_after: float = 120.0,
                 max_redirects: int = MAX_REDIRECTS) -> None:
        self.policy = policy
        self.stop_event = stop_event
        self.user_agent = user_agent
        self.delay, self.timeout = delay, timeout
        self.max_body_bytes = max_body_bytes
        self.retries, self.backoff, self.max_retry_after = retries, backoff, max_retry_after
        self.max_redirects = max_redirects
        self._client: httpx.Client | None = None
        self._robots: dict[str, tuple] = {}  # origin -> (its rules, status, monotonic expiry)
        self._next_request: dict[str, float] = {}  # host -> monotonic time of its next request
        self._crawl_delay: dict[str, float] = {}  # host -> its robots.txt Crawl-delay

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(transport=guarded_transport(self.policy), follow_redirects=False,
                                        headers={"User-Agent": self.user_agent,
                                                 "Accept-Encoding": ACCEPT_ENCODING},
                                        timeout=httpx.Timeout(self.timeout), trust_env=False)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def fetch(self, url: str, validators: tuple[str | None, str | None] = (None, None)) -> Response:
        """GET with robots, guard, delay, retries and re-checked redirects; a 2xx with content
        or FetchFailed. With (ETag, Last-Modified) `validators` of a stored copy, the request
        is conditional (If-None-Match / If-Modified-Since) and a 304 comes back as it is."""
        hops = [url]
        current = url
        etag, modified = validators
        conditional = {k: v for k, v in (("If-None-Match", etag), ("If-Modified-Since", modified)) if v}
        while True:
            self._check_allowed(current)
            resp = self._request(current, headers=conditional if current == url else None)
            if resp.status == 304 and conditional and current == url:
                return resp
            if resp.status in REDIRECT_STATUSES:
                if len(hops) > self.max_redirects:
                    raise FetchFailed(f"more than {self.max_redirects} redirects", UrlStatus.ERROR, resp.status)
                try:
                    nxt = canonical_url(resp.location or "", current)
                except Refused as r:
                    raise FetchFailed(f"redirect refused: {r.reason}", UrlStatus.REFUSED, resp.status) from None
                if nxt in hops:
                    raise FetchFailed(f"redirect loop back to {nxt}", UrlStatus.ERROR, resp.status)
                hops.append(nxt)
                current = nxt
                continue
            if resp.status >= 400:
                status = UrlStatus.FAILED if resp.status in RETRY_STATUSES else UrlStatus.ERROR
                raise FetchFailed(f"HTTP {resp.status}", status, resp.status)
            if resp.status in (204, 205) or not 200 <= resp.status < 300:
                raise FetchFailed(f"HTTP {resp.status} (no content to read)", UrlStatus.ERROR, resp.status)
            return resp

    def _check_guard(self, url: str) -> None:
        """The SSRF guard's verdict: refused by it, or failed when the host does not resolve
        (a network failure, retried later, not a refusal)."""
        try:
            self.policy.resolve(*host_port(url))
        except HostRefused as r:
            raise FetchFailed(r.reason, UrlStatus.REFUSED) from None
        except Refused as r:
            raise FetchFailed(r.reason, UrlStatus.FAILED) from None

    def _check_allowed(self, url: str) -> None:
        self._check_guard(url)
        rules, status = self._robots_for(url)
        reason = robots.disallowed(rules, url)
        if reason:
            raise FetchFailed(reason, status)

    def _robots_for(self, url: str) -> tuple[robots.Rules, str]:
        """The origin's rules, and the status a URL they disallow gets: disallowed, or failed
        when robots.txt could not be reached over the network (RFC 9309 still says: disallow
        everything). Kept ROBOTS_TTL seconds (a network failure ROBOTS_FAILURE_TTL)."""
        site = origin(url)
        now = time.monotonic()
        if site not in self._robots or self._robots[site][2] <= now:
            robots_url = site + "/robots.txt"
            status, ttl = UrlStatus.DISALLOWED, ROBOTS_TTL
            try:
                resp = self._fetch_robots(robots_url)
            except FetchFailed as f:
                # RFC 9309: an unreachable robots.txt (5xx, network) means "disallow everything"
                rules = robots.unavailable(f.reason)
                if f.status == UrlStatus.FAILED and f.http_status is None:  # network, not the server
                    status, ttl = UrlStatus.FAILED, ROBOTS_FAILURE_TTL
            else:
                rules = robots.rules_from_response(robots_url, resp.status, resp.body)
                delay = robots.crawl_delay(rules)
                if delay:
                    self._crawl_delay[host_of(site)] = delay
            self._robots[site] = (rules, status, now + ttl)
        rules, status, _ = self._robots[site]
        return rules, status

    def _fetch_robots(self, url: str) -> Response:
        current, hops = url, [url]
        while True:
            self._check_guard(current)
            resp = self._request(current, cap=robots.ROBOTS_MAX_BYTES)
            if resp.status in REDIRECT_STATUSES:
                try:
                    nxt = canonical_url(resp.location or "", current)
                except Refused as r:
                    raise FetchFailed(r.reason, UrlStatus.REFUSED) from None
                if nxt in hops or len(hops) > self.max_redirects:
                    return Response(current, 404, "", None, b"")  # RFC 9309: give up, allow
                hops.append(nxt)
                current = nxt
                continue
            if resp.status >= 500 or resp.status == 429:
                raise FetchFailed(f"HTTP {resp.status}", UrlStatus.FAILED, resp.status)
            return resp

    def _request(self, url: str, cap: int | None = None, headers: dict | None = None) -> Response:
        """One GET with the per-host delay and retries; redirects come back unread.

        Connecting, sending, the status line, the headers and the body of every attempt
        share one budget of `timeout * DEADLINE_TIMEOUTS` seconds (the waits between
        attempts, which are interruptible and bounded on their own, do not count): a server
        that trickles its headers is cut off when the budget is spent, and not retried."""
        cap = self.max_body_bytes if cap is None else cap
        budget = self.timeout * DEADLINE_TIMEOUTS
        spent = 0.0
        attempt = 0
        while True:
            self._wait_turn(url)
            retry_in = self.backoff * 2 ** attempt
            started = time.monotonic()
            try:
                with deadline(started + budget - spent):
                    resp = self._get_once(url, cap, headers)
            except httpx.TimeoutException as e:
                failure = FetchFailed(f"timed out ({type(e).__name__}: {e})")
            except httpx.RemoteProtocolError as e:
                if "location header" in str(e).lower():  # httpx parses Location itself, and gives up
                    raise FetchFailed(f"redirect refused: malformed URL ({e})", UrlStatus.REFUSED) from None
                failure = FetchFailed(f"network error: {e}")
            except httpx.TransportError as e:
                failure = FetchFailed(f"network error: {e}")
            except httpx.HTTPError as e:  # e.g. DecodingError: a gzip body that does not inflate
                failure = FetchFailed(f"bad response ({type(e).__name__}): {e}")
            except httpx.InvalidURL as e:  # canonical_url should have refused it already
                raise FetchFailed(f"malformed URL: {e}", UrlStatus.REFUSED) from None
            else:
                if resp.status not in RETRY_STATUSES:
                    return resp
                failure = FetchFailed(f"HTTP {resp.status}", UrlStatus.FAILED, resp.status)
                if resp.retry_after is not None:
                    after = parse_retry_after(resp.retry_after)
                    if after is not None:
                        if after > self.max_retry_after:
                            failure.reason += f" (Retry-After {after:.0f} s exceeds {self.max_retry_after:.0f} s)"
                            raise failure
                        retry_in = max(after, 0.0)
            finally:
                spent += time.monotonic() - started
            if spent >= budget - MIN_ATTEMPT_S:  # what is left could not hold an attempt
                failure.reason += (f" after {attempt + 1} attempts: the total time limit of {budget:g} s "
                                   f"({DEADLINE_TIMEOUTS} x --timeout) was spent")
                raise failure
            if attempt >= self.retries:
                failure.reason += f" after {attempt + 1} attempts"
                raise failure
            attempt += 1
            log.info("retrying %s in %.2f s: %s", url, retry_in, failure.reason)
            if self.stop_event.wait(retry_in):
                raise Interrupted

    def _get_once(self, url: str, cap: int, headers: dict | None = None) -> Response:
        with self.client.stream("GET", url, headers=headers) as r:
            host = host_of(url)
            self._next_request[host] = time.monotonic() + max(self.delay, self._crawl_delay.get(host, 0.0))
            if r.status_code in REDIRECT_STATUSES:
                loc = r.headers.get("location")
                if not loc:
                    return Response(url, 404, "", None, b"")
                return Response(url, r.status_code, "", None, b"", location=loc)
            if r.status_code in RETRY_STATUSES:
                return Response(url, r.status_code, "", None, b"", retry_after=r.headers.get("retry-after"))
            if r.status_code >= 300:
                return Response(url, r.status_code, "", None, b"")
            ctype, charset = _content_type(r.headers.get("content-type", ""))
            if ctype and not (ctype.startswith("text/") or ctype in HTML_TYPES):
                raise FetchFailed(f"non-text content type {ctype}", UrlStatus.SKIPPED, r.status_code)
            length = r.headers.get("content-length")
            if length and length.isascii() and length.isdigit() and int(length) > cap:
                raise FetchFailed(f"body too large (Content-Length {length} > cap of {cap} bytes)",
                                  UrlStatus.SKIPPED, r.status_code)
            try:  # decoded here, within the cap (decoding.py): httpx's iter_bytes has no output bound
                body = BoundedBody(r.headers.get("content-encoding", ""), cap)
                for chunk in r.iter_raw():
                    body.feed(chunk)
                    if self.stop_event.is_set():
                        raise Interrupted
            except BodyRefused as b:
                raise FetchFailed(b.reason, UrlStatus.SKIPPED, r.status_code) from None
            try:
                final = canonical_url(str(r.url))
            except Refused:
                final = url
            return Response(final, r.status_code, ctype, charset, body.body(),
                            etag=r.headers.get("etag"), last_modified=r.headers.get("last-modified"))

    def _wait_turn(self, url: str) -> None:
        """The per-host politeness delay, interruptible by stop_event."""
        wait = self._next_request.get(host_of(url), 0.0) - time.monotonic()
        if wait > 0 and self.stop_event.wait(wait):
            raise Interrupted


def host_of(url: str) -> str:
    """The host[:port] the per-host delay and Crawl-delay are kept by."""
    return urlsplit(url).netloc


def _content_type(header: str) -> tuple[str, str | None]:
    """(media type, lower-cased; charset parameter or None) of a Content-Type header."""
    ctype, _, params = header.partition(";")
    m = re.search(r"charset\s*=\s*[\"']?([^\"';\s]+)", params, re.I)
    return ctype.strip().lower(), m.group(1) if m else None
