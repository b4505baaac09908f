"""The fetcher's time limits and conditional requests, against servers on 127.0.0.1."""
from __future__ import annotations

from tests.agent.helpers import DripServer
from tests.agent.test_crawler import crawler, urls


def test_a_server_that_drips_its_headers_is_cut_off_by_the_total_deadline(store):
    """A status line, then a header line every 50 ms: no single read times out, but the
    request's one budget (3 x timeout, all attempts together) does."""
    with DripServer(interval=0.05, max_lines=400) as srv:
        with crawler(store, timeout=0.2, retries=3) as c:
            report = c.crawl(srv.base + "/slow.txt")
        lines, connections = srv.lines, srv.connections
    status, _, reason = urls(store)[srv.base + "/slow.txt"]
    assert report.counts["failed"] == 1 and status == "failed"
    assert "timed out" in reason and "total time limit ran out" in reason and "was spent" in reason
    # the budget is spent by the first attempt: no retry, and the drip was cut off early
    # (the whole drip is 400 lines; without the deadline the fetch would have read them all)
    assert connections == 1 and lines < 400
