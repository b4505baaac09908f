"""robots.txt rules as RFC 9309 reads them: wildcards, end anchors, the longest match."""
from __future__ import annotations

import pytest

from agent.web import robots
from tests.agent.helpers import Route, page
from tests.agent.test_crawler import crawler, urls

WILDCARDS = b"User-agent: *\nDisallow: /*?\nDisallow: /*.txt$\n"
LONGEST = b"User-agent: *\nDisallow: /\nAllow: /docs/\n"


def verdict(body: bytes, path: str) -> str | None:
    return robots.disallowed(robots.rules_from_response("http://example.com/robots.txt", 200, body),
                             "http://example.com" + path)


@pytest.mark.parametrize("body,path,allowed", [
    (WILDCARDS, "/search?q=1", False), (WILDCARDS, "/docs/notes.txt", False),
    (WILDCARDS, "/docs/notes.txt.html", True), (WILDCARDS, "/docs/page.html", True),
    (LONGEST, "/docs/page1.html", True), (LONGEST, "/other.html", False), (LONGEST, "/", False),
    (b"User-agent: other\nDisallow: /\n\nUser-agent: CrystallineCLLM\nAllow: /\n", "/x", True),
    (b"User-agent: crystallinecllm\nDisallow: /private\n", "/private/a", False),
])
def test_rfc_9309_matching(body, path, allowed):
    assert (verdict(body, path) is None) == allowed


def test_a_4xx_robots_txt_allows_everything_and_crawl_delay_is_capped():
    assert robots.disallowed(robots.rules_from_response("u", 404, b""), "http://example.com/a") is None
    rules = robots.rules_from_response("u", 200, b"User-agent: *\nCrawl-delay: 3600\n")
    assert robots.crawl_delay(rules) == robots.MAX_CRAWL_DELAY


def test_the_crawler_obeys_wildcards_and_the_longest_match(store, site):
    b = site.base
    site.routes["/robots.txt"] = Route(200, LONGEST + b"Disallow: /*?\nDisallow: /*.txt$\n",
                                       {"Content-Type": "text/plain"})
    site.routes["/"] = Route(200, page("Home", "home words").encode(), {"Content-Type": "text/html"})
    site.html("/docs/page1.html", page("Docs", "the docs page about herons",
                                       ("/docs/notes.txt", "/search?q=1", "/elsewhere.html")))
    site.routes["/docs/notes.txt"] = Route(200, b"notes\n", {"Content-Type": "text/plain"})
    with crawler(store) as c:
        c.crawl(b + "/docs/page1.html")
    u = urls(store)
    assert u[b + "/docs/page1.html"][0] == "fetched"
    for path in ("/docs/notes.txt", "/search?q=1", "/elsewhere.html"):
        assert u[b + path][0] == "disallowed" and site.count(path) == 0
