"""`cllm crawl` end to end through click: targets checked before any work, reports, exit codes."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from agent.cli import main


def crawl(tmp_path, *args):
    return CliRunner().invoke(main, ["crawl", "--data-dir", str(tmp_path / "data"), *args])


def documents(tmp_path) -> list[str]:
    from store import open_store
    from store.models import Document

    store = open_store(tmp_path / "data")
    try:
        with store.session(read_only=True) as s:
            return [d.uri for d in s.scalars(select(Document))]
    finally:
        store.close()


@pytest.mark.parametrize("bad", ["http://u:p@127.0.0.1:9/", "http://[::1"])
def test_a_malformed_target_is_a_usage_error_before_anything_is_stored(tmp_path, bad):
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
        (d / "notes.txt").write_text(f"notes of {d.name} about herons and egrets\n")
    r = crawl(tmp_path, str(one), bad, str(two), "--json")
    assert r.exit_code == 2, r.output
    assert "Error:" in r.output and "hint:" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "data").exists() or documents(tmp_path) == []  # nothing stored


def test_a_target_that_fails_at_run_time_is_reported_and_the_rest_run(tmp_path, monkeypatch):
    from agent import crawler as crawler_mod

    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
        (d / "notes.txt").write_text(f"notes of {d.name} about herons and egrets\n")
    walk = crawler_mod.Crawler.walk

    def walk_or_vanish(self, folder, **kw):
        if folder == str(one):  # the folder went away between the check and the walk
            raise crawler_mod.CrawlError(f"{folder} is not a folder", hint="pass an existing folder")
        return walk(self, folder, **kw)

    monkeypatch.setattr(crawler_mod.Crawler, "walk", walk_or_vanish)
    r = crawl(tmp_path, str(one), str(two), "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    by_target = {t["target"]: t["counts"] for t in report["targets"]}
    assert by_target[str(one)] == {"failed": 1} and by_target[str(two)] == {"added": 1}
    assert documents(tmp_path) == [(two / "notes.txt").as_uri()]


def test_allow_network_opens_exactly_that_network(tmp_path, site):
    from tests.agent.helpers import page

    site.html("/", page("Home", "home words about herons"))
    refused = crawl(tmp_path, site.base + "/", "--delay", "0", "--json")
    assert refused.exit_code == 1 and json.loads(refused.output)["targets"][0]["counts"] == {"refused": 1}
    assert site.hits == []
    r = crawl(tmp_path, site.base + "/", "--delay", "0", "--allow-network", "127.0.0.1/32", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["targets"][0]["counts"] == {"fetched": 1}
    bad = crawl(tmp_path, site.base + "/", "--allow-network", "127.0.0.300/32")
    assert bad.exit_code == 2 and "bad network" in bad.output and "CIDR" in bad.output


def test_cllm_crawl_fetches_again_what_is_older_than_the_recrawl_interval(tmp_path, site):
    from tests.agent.helpers import Route, page

    site.routes["/"] = Route(200, page("Home", "home words about herons").encode(),
                             {"Content-Type": "text/html", "ETag": '"v1"'})
    args = (site.base + "/", "--delay", "0", "--allow-network", "127.0.0.1/32", "--json")
    counts = [json.loads(crawl(tmp_path, *args, *extra).output)["targets"][0]["counts"]
              for extra in ((), (), ("--recrawl-interval", "0.000001"))]
    assert counts == [{"fetched": 1}, {"seen": 1}, {"unchanged": 1}]  # default: daily
    assert [h.get("If-None-Match") for p, h in site.requests if p == "/"] == [None, '"v1"']


def closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, never listening, closed: connections are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# a closed local port, no retry: fails at once
FAST = ("--allow-network", "127.0.0.1/32", "--timeout", "1", "--retries", "0")


def test_a_crawl_where_every_target_failed_exits_1(tmp_path, caplog):
    caplog.set_level("INFO", logger="agent.web.fetch")
    url = f"http://127.0.0.1:{closed_port()}/"
    r = crawl(tmp_path, url, *FAST, "--json")
    assert r.exit_code == 1, r.output
    report = json.loads(r.output)
    assert report["targets"][0]["failed"] is True
    assert [(i["outcome"], "network error" in i["reason"]) for i in report["items"]] == [("failed", True)]
    text = crawl(tmp_path, url, *FAST)
    assert text.exit_code == 1 and "every target failed" in text.output
    assert "retrying" not in caplog.text
    once = crawl(tmp_path, url, *FAST[:-1], "1")
    assert once.exit_code == 1 and caplog.text.count("retrying") == 1   # --retries reaches it
    folder = tmp_path / "ok"
    folder.mkdir()
    (folder / "notes.txt").write_text("notes about herons and egrets\n")
    mixed = crawl(tmp_path, str(folder), url, *FAST)
    assert mixed.exit_code == 0, mixed.output
