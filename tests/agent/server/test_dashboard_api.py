"""The routes behind the dashboard, against a real server: the page and its assets, the
live event stream (a store change and a new checkpoint are announced, nothing otherwise),
crawl targets through the store, neighbours, and the benchmark's validation."""
from __future__ import annotations

import json
import queue
import re
import threading

from tests.agent.server.conftest import train_tiny, wait_loaded


def test_page_and_assets_come_from_the_package(serve, trained, http):
    server = serve(trained)
    page = http.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text and http.get(server.url + asset).status_code == 200
    refs = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert refs and all(r.startswith("/static/") for r in refs)   # nothing from the internet


class EventReader:
    """Reads /api/events on a thread, one (event, data) item into a queue per message."""

    def __init__(self, url: str, http) -> None:
        self.items: queue.Queue = queue.Queue()
        self.opened = threading.Event()
        self.http = http
        self._t = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._t.start()

    def _run(self, url: str) -> None:
        with self.http.stream("GET", url + "/api/events", timeout=60) as r:
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    self.items.put((event, json.loads(line[6:])))
        self.items.put(("closed", None))

    def next(self, timeout: float = 60):
        return self.items.get(timeout=timeout)

    def join(self) -> None:
        self._t.join(60)
        assert not self._t.is_alive()


def test_events_announce_store_changes_and_new_checkpoints(serve, corpus, tmp_path, http):
    data = tmp_path / "data"
    train_tiny(corpus, data)
    server = serve(data)
    wait_loaded(server)
    ev = EventReader(server.url, http)
    assert ev.next() == ("hello", {"cycle": 1})
    r = http.post(server.url + "/api/targets", json={"kind": "crawl", "location": str(corpus)})
    assert r.status_code == 201
    assert ev.next() == ("store", {"changed": ["targets"]})
    train_tiny(corpus, data)                  # a new cycle: the store, and then the model
    seen = [ev.next(), ev.next()]
    while ("model", {"cycle": 2}) not in seen:
        seen.append(ev.next())
    assert any(e == "store" and "status" in d["changed"] for e, d in seen)
    server.stop()                              # open streams end with the server
    items = []
    while not items or items[-1][0] != "closed":
        items.append(ev.next())
    ev.join()


def test_targets_are_rows_of_the_store(serve, trained, tmp_path, http):
    server = serve(trained)
    u = server.url
    folder = tmp_path / "notes"
    folder.mkdir()
    r = http.post(u + "/api/targets", json={"kind": "watch", "location": str(folder)})
    assert r.status_code == 201
    tid = r.json()["id"]
    listed = http.get(u + "/api/targets").json()
    assert [(t["id"], t["kind"], t["enabled"]) for t in listed if t["id"] == tid] == [
        (tid, "watch", True)]
    again = http.post(u + "/api/targets", json={"kind": "watch", "location": str(folder) + "/"})
    assert again.json()["id"] == tid                        # one row per canonical target
    for body in ({"kind": "sideways", "location": "x"}, {"kind": "crawl"}, {"kind": "crawl",
                                                                             "location": " "}):
        bad = http.post(u + "/api/targets", json=body)
        assert bad.status_code == 400 and bad.json()["error"]["message"]
    evil = http.post(u + "/api/targets", json={"kind": "crawl", "location": str(folder)},
                      headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    assert http.delete(u + f"/api/targets/{tid}").status_code == 204
    assert http.delete(u + f"/api/targets/{tid}").status_code == 404
    assert all(t["id"] != tid for t in http.get(u + "/api/targets").json())


def test_neighbours_and_bench_validation(serve, trained, http):
    server = serve(trained)
    ckpt = wait_loaded(server)
    u = server.url
    d = http.get(u + "/api/neighbours?token=100").json()
    assert d["token"] == 100 and len(d["neighbours"]) == 12
    assert d["text"] == ckpt.tokenizer.token_bytes(100).decode("utf-8", "backslashreplace")
    for q in ("", "?token=-1", f"?token={len(ckpt.tokenizer)}", "?token=x"):
        assert http.get(u + "/api/neighbours" + q).status_code == 400
    for body in ({"preset": "huge"}, {"workers": []}, {"workers": [0]}, {"rounds": 99}, [1]):
        r = http.post(u + "/api/bench", json=body)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
