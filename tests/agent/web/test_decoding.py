"""Compressed bodies are decoded by the crawler itself, within the body cap while they
inflate: a gzip bomb costs the cap, not what it inflates to, on pages, redirect targets and
robots.txt alike; stacked and unknown content codings are refused unread."""
from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest

from agent.web.decoding import ACCEPT_ENCODING, BodyRefused, BoundedBody
from tests.agent.helpers import Route, page
from tests.agent.test_crawler import crawler, urls

CAP = 256 * 1024
BOMB = gzip.compress(b"a" * (32 * 1024 * 1024), compresslevel=9)  # 32 MiB from ~32 KB on the wire


def test_the_decoder_never_produces_more_than_the_cap_and_one_byte():
    """All of the bomb fed at once (one network read): zlib is asked for at most what is
    left of the cap plus one byte, so nothing larger is ever allocated."""
    assert len(BOMB) < 64 * 1024
    body = BoundedBody("gzip", CAP)
    with pytest.raises(BodyRefused, match=f"more than the cap of {CAP} bytes, decoding gzip"):
        body.feed(BOMB)
    assert body.decoded_bytes == CAP + 1 and len(body.body()) <= CAP


def test_a_gzip_bomb_page_is_cut_at_the_cap_with_bounded_memory(store, site):
    site.routes["/bomb.txt"] = Route(200, BOMB, {"Content-Type": "text/plain", "Content-Encoding": "gzip"})
    with crawler(store, max_body_bytes=CAP) as c:
        tracemalloc.start()
        try:
            report = c.crawl(site.base + "/bomb.txt")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    # httpx's own decoder inflated a whole network read at once: 32 MiB here
    assert peak < 8 * CAP, f"peak {peak:,} bytes traced while the bomb was fetched"
    status, code, reason = urls(store)[site.base + "/bomb.txt"]
    assert (status, code) == ("skipped", 200) and report.counts["skipped"] == 1
    assert reason == f"body too large (more than the cap of {CAP} bytes, decoding gzip)"


def test_a_bomb_behind_a_redirect_or_in_robots_txt_is_cut_too(store, site):
    b = site.base
    site.routes["/jump"] = Route(302, b"", {"Location": "/bomb.txt"})
    site.routes["/bomb.txt"] = Route(200, BOMB, {"Content-Type": "text/plain", "Content-Encoding": "gzip"})
    with crawler(store, max_body_bytes=CAP) as c:
        c.crawl(b + "/jump")
    status, _, reason = urls(store)[b + "/jump"]
    assert status == "skipped" and f"more than the cap of {CAP} bytes, decoding gzip" in reason
    # robots.txt has its own cap (512 KiB): a bomb there makes the site unavailable, as any
    # robots.txt that cannot be read does (RFC 9309), and is never inflated past the cap
    site.routes["/robots.txt"] = Route(200, BOMB, {"Content-Type": "text/plain", "Content-Encoding": "gzip"})
    site.html("/", page("Home", "home words about herons"))
    with crawler(store, max_body_bytes=CAP) as c:
        c.crawl(b + "/")
    status, _, reason = urls(store)[b + "/"]
    assert status == "disallowed" and "robots.txt unavailable (body too large" in reason
    assert site.count("/") == 0


def test_stacked_and_unknown_content_codings_are_refused_and_known_ones_decoded(store, site):
    b = site.base

    def text(bird: str) -> bytes:
        return f"plain words about {bird} and the river\n".encode() * 20

    site.routes["/double.txt"] = Route(200, gzip.compress(gzip.compress(text("herons"))),
                                       {"Content-Type": "text/plain", "Content-Encoding": "gzip, gzip"})
    site.routes["/brotli.txt"] = Route(200, b"\x0b\x02\x80hello\x03",
                                       {"Content-Type": "text/plain", "Content-Encoding": "br"})
    site.routes["/gzip.txt"] = Route(200, gzip.compress(text("egrets")),
                                     {"Content-Type": "text/plain", "Content-Encoding": "gzip"})
    site.routes["/zlib.txt"] = Route(200, zlib.compress(text("grebes")),
                                     {"Content-Type": "text/plain", "Content-Encoding": "deflate"})
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    site.routes["/raw.txt"] = Route(200, raw.compress(text("rails")) + raw.flush(),
                                    {"Content-Type": "text/plain", "Content-Encoding": "Deflate"})
    site.routes["/plain.txt"] = Route(200, text("coots"),
                                      {"Content-Type": "text/plain", "Content-Encoding": "identity"})
    with crawler(store) as c:
        for path in ("/double.txt", "/brotli.txt", "/gzip.txt", "/zlib.txt", "/raw.txt", "/plain.txt"):
            c.crawl(b + path)
    u = urls(store)
    assert u[b + "/double.txt"] == ("skipped", 200, "more than one content-encoding (gzip, gzip): refused "
                                                    "(each layer multiplies what one read decodes to)")
    assert u[b + "/brotli.txt"] == ("skipped", 200, "unsupported content-encoding 'br' (asked for gzip, "
                                                    "deflate only)")
    for path in ("/gzip.txt", "/zlib.txt", "/raw.txt", "/plain.txt"):
        assert u[b + path][0] == "fetched", (path, u[b + path])
    sent = {path: headers.get("Accept-Encoding") for path, headers in site.requests}
    assert sent["/gzip.txt"] == ACCEPT_ENCODING == "gzip, deflate"
