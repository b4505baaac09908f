"""What waiting clients may hold, against a real server: completions waiting for a slot
hold no worker thread (the store routes answer meanwhile)."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from agent.server import api
from agent.server.config import Limits
from tests.agent.server.conftest import wait_loaded


def test_waiting_completions_hold_no_worker_thread(serve, trained, monkeypatch):
    n = 48              # more than the 40 threads anyio lends the routes' blocking calls
    server = serve(trained, limits=Limits(concurrency=1, queue_timeout=120))
    wait_loaded(server)
    arrived, count, lock = threading.Event(), [0], threading.Lock()
    real_start = api.start_generation

    async def counted(service, req):
        with lock:
            count[0] += 1
            if count[0] == n:
                arrived.set()
        return await real_start(service, req)
    monkeypatch.setattr(api, "start_generation", counted)
    slots = server.service.slots
    assert slots.acquire(0)                      # the one slot is busy: every request waits
    with ThreadPoolExecutor(n) as ex:
        futures = [ex.submit(httpx.post, server.url + "/v1/completions", timeout=120,
                             json={"prompt": "x", "max_tokens": 1}) for _ in range(n)]
        try:
            assert arrived.wait(60), f"only {count[0]} of {n} completions arrived"
            # routes that read the store on a worker thread answer while all of them wait
            assert httpx.get(server.url + "/api/targets", timeout=10).status_code == 200
            assert httpx.get(server.url + "/api/status", timeout=10).status_code == 200
        finally:
            slots.release()
        assert [f.result().status_code for f in futures] == [200] * n
