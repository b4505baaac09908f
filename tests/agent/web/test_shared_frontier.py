"""Several crawlers on one store share the frontier (issue 17): two crawling the same site at
once fetch each URL once between them, and the claims of a crawler that died pass to the
others once they expire. On both backends (PostgreSQL: SKIP LOCKED claims)."""
from __future__ import annotations

import datetime as dt
import threading
from collections import Counter

from sqlalchemy import select

from store import frontier, lease
from store.models import FetchedUrl, UrlStatus
from tests.agent.helpers import page
from tests.agent.test_crawler import crawler


def site_of(site, n=24):
    site.html("/", page("Hub", "the hub of the site", tuple(f"/p{i}" for i in range(n))))
    for i in range(n):
        site.html(f"/p{i}", page(f"P{i}", f"page number {i} has its own words " * 4,
                                 (f"/p{(i + 1) % n}", "/")))


def test_two_crawlers_fetch_each_url_once_between_them(store_target, site):
    site_of(site)
    stores = [store_target.open() for _ in range(2)]
    try:
        start = threading.Barrier(2)
        reports = [None, None]

        def run(i):
            with crawler(stores[i], max_pages=100) as c:
                start.wait()
                reports[i] = c.crawl(site.base + "/")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        hits = Counter(path for path, _, _ in site.hits if path != "/robots.txt")
        assert set(hits) == {"/"} | {f"/p{i}" for i in range(24)}
        assert max(hits.values()) == 1, hits                 # never fetched twice
        fetched = [r.counts[UrlStatus.FETCHED] for r in reports]
        assert sum(fetched) == 25
        with stores[0].session() as s:
            rows = list(s.scalars(select(FetchedUrl)))
        assert len(rows) == 25 and {r.status for r in rows} == {UrlStatus.FETCHED}
        assert all(r.claimed_by is None for r in rows)       # the outcomes released the claims
    finally:
        for st in stores:
            st.close()


def test_the_claims_of_a_dead_crawler_expire_and_pass_to_another(store, site):
    site_of(site, n=4)
    base = site.base
    with store.session() as s:                  # a crawler died holding claims on two pages
        for path in ("/p1", "/p2"):
            assert frontier.claim_url(s, base + path, "dead-host:1:x", ttl_s=3600, depth=1)
    with crawler(store) as c:
        c.crawl(base + "/")
    hits = Counter(path for path, _, _ in site.hits)
    assert "/p1" not in hits and "/p2" not in hits and hits["/p3"] == 1
    with store.session() as s:                  # ... an hour later its claims have expired
        for row in s.scalars(select(FetchedUrl).where(FetchedUrl.claimed_by == "dead-host:1:x")):
            row.claim_expires = lease.db_now(s) - dt.timedelta(seconds=1)
    with crawler(store) as c:
        report = c.crawl(base + "/")
    hits = Counter(path for path, _, _ in site.hits)
    assert hits["/p1"] == 1 and hits["/p2"] == 1 and report.counts[UrlStatus.FETCHED] == 2


def test_a_claim_is_refused_while_another_holds_it_and_after_the_url_is_handled(store):
    url = "https://example.org/a"
    with store.session() as s:
        assert frontier.claim_url(s, url, "one", 60)
        assert not frontier.claim_url(s, url, "two", 60)
        assert frontier.claim_url(s, url, "one", 60)        # its holder renews it
        frontier.record_url(s, url, status=UrlStatus.FETCHED, http_status=200)
        assert not frontier.claim_url(s, url, "two", 60)    # handled for good
        later = lease.db_now(s) + dt.timedelta(seconds=5)
        assert frontier.claim_url(s, url, "two", 60, fresh_after=later)   # due for a re-crawl
