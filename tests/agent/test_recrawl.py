"""Re-crawls: a handled URL is fetched again once it is older than the interval, with a
conditional request; a 304 changes nothing, a changed page is a new version of its document,
a removed page's document is marked deleted. Against the 127.0.0.1 `site` of conftest.py."""
from __future__ import annotations

import threading

from sqlalchemy import select

from tests.agent.helpers import Route, page, rows
from tests.agent.test_crawler import crawler, urls

DUE = 1e-6  # seconds: every URL fetched before this crawl is due again


def html(body: str, etag: str | None = None, **headers) -> Route:
    if etag:
        headers["ETag"] = etag
    return Route(200, body.encode(), {"Content-Type": "text/html; charset=utf-8", **headers})


def url_row(store, url):
    from store.models import FetchedUrl

    with store.session(read_only=True) as s:
        u = s.scalars(select(FetchedUrl).where(FetchedUrl.url == url)).one()
        return u.status, u.etag, u.last_modified, u.fetched_at


def conditional_headers(site, path):
    return [(h.get("If-None-Match"), h.get("If-Modified-Since")) for p, h in site.requests if p == path]


def test_a_fresh_url_is_not_fetched_again_and_a_due_one_is_asked_conditionally(store, site):
    b = site.base
    site.routes["/"] = html(page("Home", "home words about herons"), etag='"v1"',
                            **{"Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT"})
    with crawler(store, recrawl_interval=3600) as c:
        assert c.crawl(b + "/").counts["fetched"] == 1
        assert c.crawl(b + "/").counts == {"seen": 1}  # fetched within the interval
    before = rows(store)
    status, etag, modified, fetched_at = url_row(store, b + "/")
    assert (status, etag, modified) == ("fetched", '"v1"', "Tue, 01 Dec 2026 10:00:00 GMT")
    with crawler(store, recrawl_interval=DUE) as c:
        report = c.crawl(b + "/")
    assert report.counts == {"unchanged": 1} and report.bytes_read == 0
    assert conditional_headers(site, "/") == [(None, None), ('"v1"', "Tue, 01 Dec 2026 10:00:00 GMT")]
    assert rows(store) == before  # a 304 changes nothing stored ...
    assert url_row(store, b + "/")[:3] == (status, etag, modified)
    assert url_row(store, b + "/")[3] > fetched_at  # ... but the time of the last fetch


def test_a_changed_page_becomes_a_new_version_even_behind_an_unchanged_hub(store, site):
    b = site.base
    site.routes["/"] = html(page("Hub", "hub words about rails", ("/a",)), etag='"hub"')
    site.routes["/a"] = [html(page("A", "the first words about grebes"), etag='"a1"'),
                         html(page("A", "the second words about grebes, changed"), etag='"a2"')]
    with crawler(store) as c:
        c.crawl(b + "/")
    with crawler(store, recrawl_interval=DUE) as c:
        report = c.crawl(b + "/")
    # the hub answered 304 (no links read), and /a was still revisited as due
    assert report.counts == {"unchanged": 1, "fetched": 1}
    assert conditional_headers(site, "/a") == [(None, None), ('"a1"', None)]
    versions = [(r["status"], r["reason"]) for r in rows(store) if r["uri"] == b + "/a"]
    first, second = [r for r in rows(store) if r["uri"] == b + "/a"]
    assert versions == [("skipped", f"superseded by document {second['id']} before training"),
                        ("pending", None)]
    from store.models import Document

    with store.session(read_only=True) as s:
        assert "changed" in s.get(Document, second["id"]).text
    assert url_row(store, b + "/a")[:2] == ("fetched", '"a2"')


def test_a_removed_page_is_marked_deleted(store, site):
    b = site.base
    site.routes["/gone"] = [html(page("Gone", "words of a page about to go")),
                            Route(404, b"not here", {"Content-Type": "text/plain"})]
    site.routes["/old"] = [html(page("Old", "words of another page about to go")),
                           Route(410, b"gone for good", {"Content-Type": "text/plain"})]
    with crawler(store) as c:
        c.crawl(b + "/gone")
        c.crawl(b + "/old")
    assert {r["status"] for r in rows(store)} == {"pending"}
    with crawler(store, recrawl_interval=DUE) as c:  # the due pages of the origin are revisited
        report = c.crawl(b + "/gone")
    assert report.counts == {"deleted": 2, "error": 2}
    assert [(r["status"], "removed from its site" in r["reason"]) for r in rows(store)] == [
        ("deleted", True), ("deleted", True)]
    assert urls(store)[b + "/gone"][:2] == ("error", 404) and urls(store)[b + "/old"][:2] == ("error", 410)


def test_without_an_interval_a_handled_url_is_never_fetched_again(store, site):
    site.routes["/"] = html(page("Home", "home words about herons"), etag='"v1"')
    with crawler(store) as c:  # recrawl_interval 0: off
        c.crawl(site.base + "/")
        assert c.crawl(site.base + "/").counts == {"seen": 1}
    assert site.count("/") == 1


def test_the_agent_recrawls_its_url_targets_when_due(store, site, tmp_path, monkeypatch):
    """The agent's crawl thread waits on its stop event until the next due time, then
    re-crawls: here two conditional re-fetches arrive, then the agent stops it."""
    from agent.crawler import iter_targets
    from agent import crawler as crawl_loop
    from agent.crawler import CrawlLoop
    from agent.settings import AgentConfig, TrainerSettings

    arrived = threading.Semaphore(0)
    site.routes["/"] = html(page("Home", "home words about herons"), etag='"v1"')
    handler_hits = site.hits

    class Counting(list):
        def append(self, hit):
            super().append(hit)
            if hit[0] == "/":
                arrived.release()

    site.hits = Counting(handler_hits)
    monkeypatch.setattr(crawl_loop, "MIN_RECRAWL_WAIT_S", 0.0)
    cfg = AgentConfig(tmp_path / "data", TrainerSettings(preset="tiny", workers=1), crawl=(site.base + "/",),
                      allow_networks=("127.0.0.1/32",), recrawl_interval=0.2)
    stop, crawled = threading.Event(), threading.Event()
    loop = CrawlLoop(store, cfg, list(iter_targets(cfg.crawl)), {}, stop=stop, crawled=crawled,
                     on_crawled=lambda: None)
    t = threading.Thread(target=loop.run)
    t.start()
    try:
        for _ in range(3):  # the first crawl, then two re-crawls
            assert arrived.acquire(timeout=30)
        assert crawled.is_set()
    finally:
        stop.set()
        loop.close()
        t.join()
    assert conditional_headers(site, "/")[:3] == [(None, None), ('"v1"', None), ('"v1"', None)]
    assert [r["status"] for r in rows(store)] == ["pending"]
