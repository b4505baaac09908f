"""The HTTP crawler against a scripted server on 127.0.0.1, and its SSRF guard."""
from __future__ import annotations

import ipaddress
import os

import httpcore
import httpx
import pytest
from sqlalchemy import select

from agent.crawler import CrawlError, Crawler, iter_targets
from agent.inputs.ingest import Ingestor
from agent.inputs.paths import file_uri
from agent.web.ssrf import HostPolicy, address_problem
from agent.web.transport import GuardedBackend as _GuardedBackend, guarded_transport
from agent.inputs.text import Refused
from agent.web.urls import canonical_url
from tests.agent.helpers import Route, page, rows

LOCAL = ["127.0.0.1/32"]  # the test server, and nothing else, is let through the guard


def urls(store) -> dict[str, tuple[str, int | None, str | None]]:
    from store.models import FetchedUrl

    with store.session(read_only=True) as s:
        return {u.url: (u.status, u.http_status, u.reason) for u in s.scalars(select(FetchedUrl))}


def crawler(store, **kw) -> Crawler:
    kw.setdefault("allow_networks", LOCAL)
    kw.setdefault("delay", 0.0)
    kw.setdefault("timeout", 2.0)
    kw.setdefault("retries", 1)
    kw.setdefault("backoff", 0.05)
    return Crawler(store, **kw)


def test_pages_links_and_user_agent(store, site):
    b = site.base
    site.html("/", page("Home", "home page words about herons", (
        "rel.html", "/abs.html", f"{b}/full.html", f"//{site.host}:{site.port}/proto.html",
        "mailto:someone@example.org", "javascript:void(0)", "#top")))
    for name in ("rel", "abs", "full", "proto"):
        site.html(f"/{name}.html", page(name, f"the {name} page tells about {name} things"))
    with crawler(store) as c:
        report = c.crawl(b + "/")
    assert report.counts["fetched"] == 5
    for name in ("rel", "abs", "full", "proto"):
        assert site.count(f"/{name}.html") == 1
    assert all("CrystallineCLLM" in ua for _, ua, _ in site.hits)
    docs = {r["uri"]: r for r in rows(store)}
    assert docs[b + "/rel.html"]["status"] == "pending"
    assert docs[b + "/rel.html"]["source"] == b


def test_robots_txt_is_obeyed(store, site):
    b = site.base
    site.routes["/robots.txt"] = Route(200, b"User-agent: *\nDisallow: /private/\n", {"Content-Type": "text/plain"})
    site.html("/", page("Home", "public words", ("/private/secret.html", "/open.html")))
    site.html("/private/secret.html", page("Secret", "never fetched"))
    site.html("/open.html", page("Open", "open words for everyone"))
    with crawler(store) as c:
        c.crawl(b + "/")
    assert site.count("/private/secret.html") == 0
    assert site.count("/open.html") == 1
    assert urls(store)[b + "/private/secret.html"][0] == "disallowed"


def test_unreachable_robots_txt_means_disallow(store, site):
    site.routes["/robots.txt"] = Route(503, b"down")
    site.html("/", page("Home", "words"))
    with crawler(store, retries=0) as c:
        c.crawl(site.base + "/")
    assert site.count("/") == 0
    status, _, reason = urls(store)[site.base + "/"]
    assert status == "disallowed" and "robots.txt unavailable" in reason


def test_depth_limit(store, site):
    for i in range(4):
        site.html(f"/d{i}", page(f"Depth {i}", f"depth {i} words", (f"/d{i + 1}",)))
    with crawler(store, max_depth=2) as c:
        c.crawl(site.base + "/d0")
    assert [site.count(f"/d{i}") for i in range(4)] == [1, 1, 1, 0]


def test_page_limit(store, site):
    site.html("/", page("Hub", "hub words", tuple(f"/p{i}" for i in range(10))))
    for i in range(10):
        site.html(f"/p{i}", page(f"P{i}", f"page number {i} words"))
    with crawler(store, max_pages=3) as c:
        report = c.crawl(site.base + "/")
    assert len([h for h in site.hits if h[0] != "/robots.txt"]) == 3
    assert report.counts["left_unvisited"] == 8


def test_links_taken_from_one_page_are_capped(store, site, caplog):
    """A page of many links gives the frontier its first --max-links links on the crawled
    host (off-host ones do not count), and the dropped ones are counted and logged."""
    import logging

    from store.models import FetchedUrl

    b = site.base
    off_host = tuple(f"http://elsewhere.example/{i}" for i in range(5))
    site.html("/", page("Hub", "hub words", off_host + tuple(f"/p{i}" for i in range(50))))
    with crawler(store, max_links=10, max_pages=1) as c, caplog.at_level(logging.INFO, logger="agent.crawler"):
        report = c.crawl(b + "/")
    with store.session(read_only=True) as s:
        queued = list(s.scalars(select(FetchedUrl.url).where(FetchedUrl.status == "queued")
                                .order_by(FetchedUrl.id)))
    assert queued == [f"{b}/p{i}" for i in range(10)]
    assert report.counts["links_dropped"] == 40 and report.counts["left_unvisited"] == 10
    assert f"{b}/: took the first 10 of its 50 links (--max-links), dropped 40" in caplog.text


def test_per_host_delay(store, site):
    site.html("/", page("Hub", "hub words", ("/a", "/b")))
    site.html("/a", page("A", "a words"))
    site.html("/b", page("B", "b words"))
    with crawler(store, delay=0.3) as c:
        c.crawl(site.base + "/")
    times = sorted(t for p, _, t in site.hits if p != "/robots.txt")
    assert len(times) == 3
    assert all(t2 - t1 >= 0.28 for t1, t2 in zip(times, times[1:]))


def test_redirects_are_followed_and_recorded(store, site):
    b = site.base
    site.routes["/old"] = Route(301, b"", {"Location": "/older"})
    site.routes["/older"] = Route(302, b"", {"Location": f"{b}/new"})
    site.html("/new", page("New", "the page that moved"))
    with crawler(store) as c:
        c.crawl(b + "/old")
    assert [r["uri"] for r in rows(store)] == [b + "/new"]
    u = urls(store)
    assert u[b + "/old"][0] == "fetched" and u[b + "/new"][0] == "fetched"


def test_redirect_loop_and_too_many_redirects(store, site):
    b = site.base
    site.routes["/loop-a"] = Route(302, b"", {"Location": "/loop-b"})
    site.routes["/loop-b"] = Route(302, b"", {"Location": "/loop-a"})
    for i in range(7):
        site.routes[f"/chain{i}"] = Route(302, b"", {"Location": f"/chain{i + 1}"})
    site.html("/chain7", page("End", "end of the chain"))
    with crawler(store) as c:
        c.crawl(b + "/loop-a")
        c.crawl(b + "/chain0")
    u = urls(store)
    assert u[b + "/loop-a"][0] == "error" and "redirect loop" in u[b + "/loop-a"][2]
    assert "more than 5 redirects" in u[b + "/chain0"][2]
    assert site.count("/chain6") == 0 and site.count("/chain7") == 0


@pytest.mark.parametrize("target", ["http://10.0.0.1/x", "http://169.254.169.254/latest/meta-data/",
                                    "http://[::ffff:10.0.0.1]/", "http://127.0.0.2:9/"])
def test_redirect_into_a_private_range_is_refused(store, site, target):
    site.routes["/jump"] = Route(302, b"", {"Location": target})
    with crawler(store) as c:  # 127.0.0.1/32 allowed, nothing else
        c.crawl(site.base + "/jump")
    status, _, reason = urls(store)[site.base + "/jump"]
    assert status == "refused" and "SSRF guard" in reason
    assert rows(store) == []


def test_http_errors_retries_and_retry_after(store, site):
    b = site.base
    site.routes["/missing"] = Route(404, b"nope")
    site.routes["/flaky"] = [Route(500, b"oops"), Route(200, page("Flaky", "worked the second time").encode(),
                                                       {"Content-Type": "text/html"})]
    site.routes["/busy"] = [Route(429, b"slow down", {"Retry-After": "1"}),
                            Route(200, b"plain text after waiting\n", {"Content-Type": "text/plain"})]
    site.routes["/down"] = Route(503, b"down")
    with crawler(store, retries=1) as c:
        for path in ("/missing", "/flaky", "/busy", "/down"):
            c.crawl(b + path)
    u = urls(store)
    assert u[b + "/missing"][:2] == ("error", 404)
    assert u[b + "/flaky"][0] == "fetched" and site.count("/flaky") == 2
    assert u[b + "/busy"][0] == "fetched"
    t1, t2 = site.times("/busy")
    assert t2 - t1 >= 0.95  # Retry-After: 1 was honoured
    assert u[b + "/down"][0] == "failed" and site.count("/down") == 2
    assert "after 2 attempts" in u[b + "/down"][2]


def test_retry_after_beyond_the_limit_gives_up(store, site):
    site.routes["/later"] = Route(429, b"", {"Retry-After": "3600"})
    with crawler(store, retries=3, max_retry_after=10) as c:
        c.crawl(site.base + "/later")
    status, code, reason = urls(store)[site.base + "/later"]
    assert (status, code) == ("failed", 429) and "exceeds" in reason
    assert site.count("/later") == 1


def test_slow_response_hits_the_timeout(store, site):
    site.routes["/slow"] = Route(200, b"too late", {"Content-Type": "text/plain"}, delay=3.0)
    with crawler(store, timeout=0.3, retries=0) as c:
        c.crawl(site.base + "/slow")
    status, _, reason = urls(store)[site.base + "/slow"]
    assert status == "failed" and "timed out" in reason


def test_oversize_body_and_non_text_content_type(store, site):
    b = site.base
    site.routes["/big.txt"] = Route(200, b"word " * 2000, {"Content-Type": "text/plain"})
    site.routes["/big-unsized.txt"] = Route(200, b"word " * 2000, {"Content-Type": "text/plain"})
    site.routes["/pic.png"] = Route(200, b"\x89PNG\r\n\x1a\n" + bytes(100), {"Content-Type": "image/png"})
    with crawler(store, max_body_bytes=1000) as c:
        for path in ("/big.txt", "/pic.png"):
            c.crawl(b + path)
    u = urls(store)
    assert u[b + "/big.txt"][0] == "skipped" and "body too large" in u[b + "/big.txt"][2]
    assert u[b + "/pic.png"][0] == "skipped" and "non-text content type image/png" in u[b + "/pic.png"][2]
    reasons = {r["uri"]: (r["status"], r["reason"]) for r in rows(store)}
    assert reasons[b + "/pic.png"] == ("skipped", "non-text content type image/png")


def test_streamed_body_over_the_cap_is_cut(store, site):
    site.routes["/stream.txt"] = Route(200, b"word " * 2000, {"Content-Type": "text/plain"})
    with crawler(store, max_body_bytes=1000) as c:
        c.client.event_hooks["response"] = [lambda r: r.headers.pop("content-length", None)]
        c.crawl(site.base + "/stream.txt")
    status, _, reason = urls(store)[site.base + "/stream.txt"]
    assert status == "skipped" and "more than the cap" in reason


def test_malformed_html_and_declared_charset(store, site):
    b = site.base
    broken = ("<html><body><div><p>Unclosed paragraph about kingfishers <b>bold <i>nested</div></p>"
              "<p>Another paragraph with more words about the river and the birds<table><tr><td>cell")
    site.routes["/broken.html"] = Route(200, broken.encode(), {"Content-Type": "text/html"})
    latin = page("Caf\xe9", "cr\xe8me br\xfbl\xe9e and caf\xe9 au lait").encode("latin-1")
    site.routes["/latin.html"] = Route(200, latin, {"Content-Type": "text/html; charset=ISO-8859-1"})
    with crawler(store) as c:
        c.crawl(b + "/broken.html")
        c.crawl(b + "/latin.html")
    from store.models import Document

    with store.session(read_only=True) as s:
        docs = {d.uri: d for d in s.scalars(select(Document))}
        assert "kingfishers" in docs[b + "/broken.html"].text
        assert "crème brûlée" in docs[b + "/latin.html"].text
        assert docs[b + "/latin.html"].encoding == "iso8859-1"


def test_duplicate_pages_by_content(store, site):
    b = site.base
    same = page("Same", "identical words on two addresses")
    site.html("/", page("Hub", "hub words", ("/one", "/two")))
    site.html("/one", same)
    site.html("/two", same)
    with crawler(store) as c:
        report = c.crawl(b + "/")
    assert report.counts["duplicate"] == 1
    u = urls(store)
    assert u[b + "/two"][0] == "duplicate" and u[b + "/two"][2] == f"duplicate content of {b}/one"


def test_restart_does_not_refetch_but_retries_failures(store, site):
    b = site.base
    site.html("/", page("Hub", "hub words", ("/ok", "/flaky")))
    site.html("/ok", page("Ok", "fine words"))
    site.routes["/flaky"] = [Route(500, b"no"), Route(500, b"no"),
                             Route(200, page("Flaky", "finally").encode(), {"Content-Type": "text/html"})]
    with crawler(store) as c:
        c.crawl(b + "/")
    assert urls(store)[b + "/flaky"][0] == "failed"
    with crawler(store) as c:  # a new crawler, as after a restart
        c.crawl(b + "/")
        c.crawl(b + "/flaky")
    assert site.count("/") == 1 and site.count("/ok") == 1
    assert urls(store)[b + "/flaky"][0] == "fetched"


def test_a_crawl_stopped_by_the_page_limit_resumes_where_it_stopped(store, site):
    b = site.base
    site.html("/", page("Hub", "hub words", tuple(f"/p{i}" for i in range(4))))
    for i in range(4):
        site.html(f"/p{i}", page(f"P{i}", f"page number {i} words"))
    with crawler(store, max_pages=2) as c:
        c.crawl(b + "/")
    assert [site.count(f"/p{i}") for i in range(4)] == [1, 0, 0, 0]
    assert urls(store)[b + "/p3"] == ("queued", None, "found at depth 1")
    with crawler(store, max_pages=5) as c:  # a later run (after a restart) picks the frontier up
        c.crawl(b + "/")
    assert site.count("/") == 1
    assert [site.count(f"/p{i}") for i in range(4)] == [1, 1, 1, 1]


def test_the_resumed_frontier_goes_by_the_depth_column(store, site):
    """The depth a link was found at is a column: the reason text is for people only."""
    from store.models import FetchedUrl

    b = site.base
    site.html("/", page("Hub", "hub words", ("/p0", "/p1")))
    site.html("/p0", page("P0", "page zero words", ("/p0/deeper",)))
    site.html("/p1", page("P1", "page one words"))
    site.html("/p0/deeper", page("Deeper", "deeper words"))
    with crawler(store, max_pages=1) as c:
        c.crawl(b + "/")
    with store.session() as s:
        rows_ = {u.url: u for u in s.scalars(select(FetchedUrl))}
        assert (rows_[b + "/p0"].status, rows_[b + "/p0"].depth) == ("queued", 1)
        for u in rows_.values():
            u.reason = None
    with crawler(store, max_depth=0) as c:  # found one link deep: beyond this crawl's depth
        c.crawl(b + "/")
    assert site.count("/p0") == 0 and site.count("/p1") == 0
    with crawler(store, max_depth=1) as c:
        c.crawl(b + "/")
    assert [site.count(p) for p in ("/", "/p0", "/p1", "/p0/deeper")] == [1, 1, 1, 0]


def test_stop_event_interrupts_a_crawl(store, site):
    import threading

    stop = threading.Event()
    site.html("/", page("Hub", "hub words", ("/a",)))
    site.html("/a", page("A", "a words"))
    with crawler(store, delay=30.0, stop_event=stop) as c:
        threading.Timer(0.2, stop.set).start()
        report = c.crawl(site.base + "/")
    assert report.counts["interrupted"] == 1 and site.count("/a") == 0


# --- the SSRF guard ---------------------------------------------------------------------


@pytest.mark.parametrize("ip,problem", [
    ("127.0.0.1", "loopback"), ("169.254.169.254", "link-local"), ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("10.1.2.3", "private"), ("192.168.1.1", "private"), ("172.16.0.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"), ("::1", "loopback"), ("fe80::1", "link-local"),
    ("fd00::1", "private"), ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"), ("64:ff9b::a00:1", "NAT64 private"),
])
def test_address_problems(ip, problem):
    assert problem in address_problem(ipaddress.ip_address(ip))


@pytest.mark.parametrize("ip", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"])
def test_public_addresses_pass(ip):
    assert address_problem(ipaddress.ip_address(ip)) is None


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[::ffff:10.0.0.1]/",
                                 "http://localhost:1/", "http://100.64.0.1/"])
def test_guard_refuses_before_any_connection(store, url):
    with Crawler(store, delay=0, retries=0) as c:
        report = c.crawl(url)
    assert report.counts["refused"] == 1
    assert "SSRF guard" in urls(store)[canonical_url(url)][2]


def test_guard_refuses_the_local_server_unless_allowed(store, site):
    site.html("/", page("Home", "home words"))
    with Crawler(store, delay=0) as c:
        c.crawl(site.base + "/")
    assert site.hits == []  # nothing reached the server, not even robots.txt
    assert "loopback address 127.0.0.1" in urls(store)[site.base + "/"][2]
    with Crawler(store, delay=0, allow_private_hosts=True) as c:
        c.crawl(site.base + "/")
    assert urls(store)[site.base + "/"][0] == "fetched"


def test_guard_holds_at_connect_time(site):
    """The transport itself refuses, whatever resolved earlier (DNS rebinding)."""
    with pytest.raises(httpcore.ConnectError, match="SSRF guard"):
        _GuardedBackend(HostPolicy()).connect_tcp("127.0.0.1", site.port, timeout=1)
    with httpx.Client(transport=guarded_transport(HostPolicy())) as client:
        with pytest.raises(httpx.ConnectError, match="SSRF guard"):
            client.get(site.base + "/robots.txt")
    assert site.hits == []
    with httpx.Client(transport=guarded_transport(HostPolicy.build(allow_networks=LOCAL))) as client:
        assert client.get(site.base + "/robots.txt").status_code == 404


# --- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw,canon", [
    ("HTTP://Example.COM:80/a/../b/./c?x=1#frag", "http://example.com/b/c?x=1"),
    ("https://example.com:443", "https://example.com/"),
    ("https://example.com:8443/p", "https://example.com:8443/p"),
    ("http://example.com/%7euser/a%2fb", "http://example.com/~user/a%2Fb"),
    ("http://example.com/a b", "http://example.com/a%20b"),
    ("http://[::FFFF:10.0.0.1]:80/", "http://[::ffff:a00:1]/"),
    ("http://bücher.example/", "http://xn--bcher-kva.example/"),
])
def test_canonical_url(raw, canon):
    assert canonical_url(raw) == canon


def test_canonical_url_resolves_relative_and_protocol_relative():
    base = "https://example.com/dir/page.html"
    assert canonical_url("other.html", base) == "https://example.com/dir/other.html"
    assert canonical_url("//cdn.example.com/x", base) == "https://cdn.example.com/x"
    assert canonical_url("/root#a", base) == "https://example.com/root"


@pytest.mark.parametrize("bad", ["ftp://example.com/", "file:///etc/passwd", "javascript:alert(1)",
                                 "http://user:pw@example.com/", "http:///nohost"])
def test_only_plain_http_urls(bad):
    with pytest.raises(Refused):
        canonical_url(bad)


def test_crawl_refuses_other_schemes(store):
    with Crawler(store) as c, pytest.raises(CrawlError, match="only http and https"):
        c.crawl("ftp://example.com/")


# --- bad input is a recorded refusal, never a crash -------------------------------------


@pytest.mark.parametrize("location", ["http://h]/",  # urllib refuses it, httpx takes it
                                      "http://[::1"])  # both refuse it (httpx while reading the response)
def test_malformed_links_and_redirects_are_refusals(store, site, location):
    b = site.base
    site.html("/", page("Home", "home words about herons", ("http://[::1", "/ok", "http://h]/x")))
    site.html("/ok", page("Ok", "the ok page about egrets"))
    site.routes["/jump"] = Route(302, b"", {"Location": location})
    with crawler(store) as c:
        report = c.crawl(b + "/")
        c.crawl(b + "/jump")
    assert report.counts["fetched"] == 2  # the page is kept, its bad links skipped
    u = urls(store)
    assert u[b + "/"][0] == "fetched" and u[b + "/ok"][0] == "fetched"
    status, _, reason = u[b + "/jump"]
    assert status == "refused" and "malformed URL" in reason


@pytest.mark.parametrize("bad", ["http://[::1", "http://a\x00b/", "http://exa mple.com/",
                                 "http://example.com/\ud800", "http://example.com/?q=\udcff"])
def test_malformed_urls_are_refused(bad):
    with pytest.raises(Refused, match="malformed URL|invalid host name"):
        canonical_url(bad)
    with pytest.raises(Refused, match="malformed URL|invalid host name"):
        canonical_url(bad, "http://example.com/dir/")


@pytest.mark.parametrize("bad", ["http://[::1", "http://u:p@127.0.0.1:9/"])
def test_a_malformed_url_target_is_a_crawl_error(store, bad):
    with pytest.raises(CrawlError, match="malformed URL|credentials"):
        list(iter_targets([bad]))
    with Crawler(store) as c, pytest.raises(CrawlError, match="malformed URL|credentials"):
        c.crawl(bad)


@pytest.mark.parametrize("codec", ["base64", "hex", "rot13", "zlib", "uu", "bz2", "quopri", "no-such",
                                   "idna"])
def test_declared_non_text_charsets_are_ignored(store, site, codec):
    b = site.base
    site.routes["/t.txt"] = Route(200, b"xn--a- plain words about herons\n",
                                  {"Content-Type": f"text/plain; charset={codec}"})
    site.routes["/p.html"] = Route(200, page("P", "words of the page about grebes").encode(),
                                   {"Content-Type": f"text/html; charset={codec}"})
    meta = page("M", "words of the meta page about rails").replace(
        "<head>", f'<head><meta charset="{codec}">').encode()
    site.routes["/m.html"] = Route(200, meta, {"Content-Type": "text/html"})
    with crawler(store) as c:
        for path in ("/t.txt", "/p.html", "/m.html"):
            c.crawl(b + path)
    u = urls(store)
    assert [u[b + p][0] for p in ("/t.txt", "/p.html", "/m.html")] == ["fetched"] * 3
    encodings = {r["uri"]: r["encoding"] for r in rows(store)}
    assert encodings[b + "/t.txt"] == "utf-8"  # "xn--a-" does not decode as idna either
    if codec != "idna":  # a text codec, if a strange one: used where the bytes decode with it
        assert set(encodings.values()) == {"utf-8"}


@pytest.mark.parametrize("codec,body", [("utf-7", b"a lone +2AA- surrogate in words\n"),
                                        ("unicode_escape", b"an escaped \\udcff surrogate in words\n")])
def test_charsets_that_decode_to_lone_surrogates_are_refused(store, site, codec, body):
    b = site.base
    site.routes["/s.txt"] = Route(200, body, {"Content-Type": f"text/plain; charset={codec}"})
    with crawler(store) as c:
        report = c.crawl(b + "/s.txt")
    assert report.counts["skipped"] == 1
    status, _, reason = urls(store)[b + "/s.txt"]
    assert status == "skipped" and "lone surrogate" in reason
    assert [(r["status"], "lone surrogate" in r["reason"]) for r in rows(store)] == [("skipped", True)]


def test_corrupt_gzip_body_is_a_failed_fetch(store, site):
    b = site.base
    site.html("/", page("Home", "home words about herons", ("/bad.txt", "/ok")))
    site.routes["/bad.txt"] = Route(200, b"this is not gzip data at all",
                                    {"Content-Type": "text/plain", "Content-Encoding": "gzip"})
    site.html("/ok", page("Ok", "the ok page about egrets"))
    with crawler(store, retries=1) as c:
        report = c.crawl(b + "/")
    u = urls(store)
    status, _, reason = u[b + "/bad.txt"]
    assert status == "failed" and "DecodingError" in reason and "after 2 attempts" in reason
    assert site.count("/bad.txt") == 2  # retried like a network error
    assert u[b + "/ok"][0] == "fetched" and report.counts["fetched"] == 2


def test_non_ascii_digits_in_robots_txt_and_retry_after(store, site):
    b = site.base
    site.routes["/robots.txt"] = Route(200, "User-agent: *\nCrawl-delay: \u00b2\nDisallow: /private\n".encode(),
                                       {"Content-Type": "text/plain"})
    site.html("/", page("Home", "home words about herons", ("/private", "/busy")))
    site.html("/private", page("Private", "never fetched"))
    site.routes["/busy"] = [Route(429, b"", {"Retry-After": "\u00b2"}),
                            Route(200, b"plain text after waiting\n", {"Content-Type": "text/plain"})]
    with crawler(store) as c:
        c.crawl(b + "/")
    u = urls(store)
    assert u[b + "/"][0] == "fetched" and u[b + "/busy"][0] == "fetched"
    assert u[b + "/private"][0] == "disallowed" and site.count("/private") == 0


def test_url_targets_use_the_configured_fallback_encoding(store, site):
    b = site.base
    words = "\u0441\u0435\u0440\u0430\u044f \u0446\u0430\u043f\u043b\u044f \u043d\u0430 \u0440\u0435\u043a\u0435"
    site.routes["/ru.html"] = Route(200, page("Ru", words).encode("cp1251"), {"Content-Type": "text/html"})
    site.routes["/ru.txt"] = Route(200, f"{words}\n".encode("cp1251"), {"Content-Type": "text/plain"})
    with crawler(store, ingestor=Ingestor(store, fallback_encoding="cp1251")) as c:
        c.crawl(b + "/ru.html")
        c.crawl(b + "/ru.txt")
    from store.models import Document

    with store.session(read_only=True) as s:
        docs = {d.uri: (d.status, d.encoding, d.text) for d in s.scalars(select(Document))}
    for path in ("/ru.html", "/ru.txt"):
        status, encoding, text = docs[b + path]
        assert (status, encoding) == ("pending", "cp1251") and words in text


def test_a_folder_walk_stops_within_a_flat_folder(store, tmp_path):
    import threading

    for i in range(60):
        (tmp_path / f"f{i:03d}.txt").write_text(f"file number {i}\n")
    stop = threading.Event()

    class Stopping(Ingestor):
        n = 0

        def ingest_file(self, path, **kw):
            self.n += 1
            if self.n == 3:
                stop.set()  # SIGTERM, say, while the third file is read
            return super().ingest_file(path, **kw)

    with crawler(store, stop_event=stop, ingestor=Stopping(store)) as c:
        report = c.walk(str(tmp_path))
    assert report.counts["interrupted"] == 1
    assert report.counts["added"] == 3 and len(rows(store)) == 3  # committed, and no more read


def test_a_folder_walk_reads_nothing_through_a_folder_swapped_for_a_link(store, tmp_path):
    """Between the walk finding a file and reading it, its folder becomes a link to a folder
    outside the crawled one: the file is refused, and FIFOs are refused unopened, without
    blocking (the walk lists them like files)."""
    import shutil

    crawled, outside = tmp_path / "crawled", tmp_path / "outside"
    (crawled / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "notes.txt").write_text("a secret outside the crawled folder\n")
    (crawled / "sub" / "notes.txt").write_text("words inside the crawled folder\n")
    (crawled / "kept.txt").write_text("words that stay where they were\n")
    os.mkfifo(crawled / "pipe")

    class Swapping(Ingestor):
        def ingest_file(self, path, **kw):
            if os.path.basename(path) == "notes.txt":
                shutil.rmtree(crawled / "sub")
                os.symlink(outside, crawled / "sub")
            return super().ingest_file(path, **kw)

    with crawler(store, ingestor=Swapping(store)) as c:
        report = c.walk(str(crawled))
    got = {r["uri"]: (r["status"], r["reason"]) for r in rows(store)}
    assert got == {
        file_uri(crawled / "kept.txt"): ("pending", None),
        file_uri(crawled / "pipe"): ("skipped", "not a regular file"),
        file_uri(crawled / "sub" / "notes.txt"):
            ("skipped", "the folder sub on its path is a symbolic link now (not followed)"),
    }
    assert report.counts["added"] == 1 and report.counts["refused"] == 2


# --- crawl targets ----------------------------------------------------------------------


def test_a_target_typed_two_ways_is_one_target_row(store, tmp_path, monkeypatch):
    from agent.crawler import record_target
    from store.models import CrawlTarget, TargetKind

    first = record_target(store, TargetKind.CRAWL, "HTTP://Docs.Example.COM:80/a/../guide#intro",
                          max_pages=5, max_depth=1)
    again = record_target(store, TargetKind.CRAWL, "http://docs.example.com/guide")
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    folder = record_target(store, TargetKind.CRAWL, "src")
    assert record_target(store, TargetKind.CRAWL, str(tmp_path / "src") + "/") == folder
    watched = record_target(store, TargetKind.WATCH, "./src")
    with store.session(read_only=True) as s:
        got = {t.id: (t.kind, t.location, t.options) for t in s.scalars(select(CrawlTarget))}
    assert again == first and len(got) == 3
    assert got[first] == ("crawl", "http://docs.example.com/guide", {"kind": "url", "max_pages": 5, "max_depth": 1})
    assert got[folder] == ("crawl", str(tmp_path / "src"), {})
    assert got[watched] == ("watch", str(tmp_path / "src"), {})
    with pytest.raises(CrawlError, match="malformed URL"):
        record_target(store, TargetKind.CRAWL, "http://[::1")


# --- failures are "failed", refusals "refused"; progress is logged ----------------------


def test_network_failures_are_failed_not_refused(store):
    import socket

    def no_such_host(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with crawler(store, resolver=no_such_host, retries=0) as c:
        c.crawl("http://nowhere.example/")
        c.crawl(f"http://127.0.0.1:{closed}/")
    u = urls(store)
    status, _, reason = u["http://nowhere.example/"]
    assert status == "failed" and "cannot resolve host" in reason
    status, _, reason = u[f"http://127.0.0.1:{closed}/"]
    assert status == "failed" and "robots.txt unavailable (network error" in reason


def test_progress_is_logged_at_page_boundaries(store, site, caplog):
    import itertools
    import logging

    site.html("/", page("Hub", "hub words", tuple(f"/p{i}" for i in range(4))))
    for i in range(4):
        site.html(f"/p{i}", page(f"P{i}", f"page number {i} words"))
    ticks = itertools.count(0, 6)  # every page boundary is 6 s later
    with crawler(store) as c, caplog.at_level(logging.INFO, logger="agent.crawler"):
        c.clock = lambda: next(ticks)
        c.progress_every = 10
        c.crawl(site.base + "/")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("crawl of ")]
    assert len(lines) == 3  # after pages 2 and 4 (12 s, 24 s), and when done
    assert lines[0].startswith(f"crawl of {site.base}/: 2 pages requested (2 fetched, 0 unchanged), 3 queued")
    assert lines[-1].startswith(f"crawl of {site.base}/ done: 5 pages requested (5 fetched")
    assert "0 refused" in lines[-1] and "0 failed" in lines[-1]
    # per-page lines are DEBUG: at INFO a crawl is its progress and summary lines only
    info = [r.getMessage() for r in caplog.records
            if r.name == "agent.crawler" and r.levelno == logging.INFO]
    assert info == lines, info
