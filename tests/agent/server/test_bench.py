"""The dashboard's benchmark (`POST /api/bench`, agent/server/bench.py) against a real
server: bounded by the machine (CPUs, memory), run in a child process whose death leaves the
server serving, one at a time (409) and rate-limited (429 with Retry-After)."""
from __future__ import annotations

import os
import signal
import threading

import httpx

import agent.benchmark
import engine
from agent.benchmark import bench_config, scaling_bytes
from agent.server import bench as bench_mod
from agent.server.bench import BATCH, usable_cpus
from agent.server.config import Limits
from engine.params import ParamLayout
from tests.agent.server.conftest import token_of


def post_bench(server, body, timeout=300):
    return httpx.post(server.url + "/api/bench", json=body, timeout=timeout,
                      headers={"Authorization": f"Bearer {token_of(server)}"})


def test_a_small_bench_runs_in_a_child_process(serve, trained, monkeypatch):
    def in_process(*a, **kw):
        raise AssertionError("the benchmark ran inside the server's process")
    monkeypatch.setattr(agent.benchmark, "scaling", in_process)   # the child has the real one
    server = serve(trained)
    r = post_bench(server, {"preset": "tiny", "workers": [1], "rounds": 1, "steps": 1})
    assert r.status_code == 200, r.text
    res = r.json()
    assert [row["workers"] for row in res["rows"]] == [1] and res["rows"][0]["tok_s"] > 0
    assert res["batch"] == BATCH and "topology" not in res
    assert any("preset tiny" in line for line in res["lines"])


def test_bench_is_bounded_by_the_cpus_and_memory_of_this_machine(serve, trained):
    cpus = usable_cpus()
    assert cpus == len(os.sched_getaffinity(0))
    server = serve(trained)
    r = post_bench(server, {"preset": "tiny", "workers": [1, cpus + 1]})
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert f"{cpus} CPUs" in msg and f"at most {cpus}" in msg and "\n" not in msg
    # the request: 8 counts of 64 workers with `base` (more than this machine has)
    r = post_bench(server, {"preset": "base", "workers": [max(64, cpus + 1)] * 8})
    assert r.status_code == 400 and "CPUs" in r.json()["error"]["message"]
    # a run over the memory budget (here: almost none of MemAvailable) is refused
    stingy = serve(trained, limits=Limits(bench_memory_fraction=1e-6))
    r = post_bench(stingy, {"preset": "tiny", "workers": [1]})
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "needs about" in msg and "available" in msg and "fewer or smaller" in msg


def test_one_bench_at_a_time_a_killed_one_leaves_the_server_serving_and_a_rate_limit(
        serve, trained, monkeypatch):
    started, children = threading.Event(), []
    real_limit = bench_mod._limit_memory

    def spy(pid, limit):                # runs as the child starts, its pid known
        real_limit(pid, limit)
        children.append((pid, limit))
        started.set()
    monkeypatch.setattr(bench_mod, "_limit_memory", spy)
    server = serve(trained, limits=Limits(bench_interval=600))
    body = {"preset": "tiny", "workers": [1], "rounds": 10, "steps": 10}
    first: list[httpx.Response] = []
    t = threading.Thread(target=lambda: first.append(post_bench(server, body)))
    t.start()
    try:
        assert started.wait(60), "the benchmark's child never started"
        pid, limit = children[0]
        assert pid != os.getpid()
        with open(f"/proc/{pid}/limits") as f:          # its memory is capped
            data = next(line for line in f if line.startswith("Max data size"))
        assert data.split()[3] == str(limit)
        second = post_bench(server, body)
        assert second.status_code == 409 and "already running" in second.json()["error"][
            "message"]
        os.kill(pid, signal.SIGKILL)                     # as the OOM killer would
    finally:
        t.join(300)
    assert first[0].status_code == 500
    assert "killed by signal 9" in first[0].json()["error"]["message"]
    assert httpx.get(server.url + "/health").status_code == 200     # the server lives on
    assert server.service.bench.running is False
    third = post_bench(server, body)
    assert third.status_code == 429 and 590 <= int(third.headers["retry-after"]) <= 600
    assert third.json()["error"]["type"] == "rate_limit_error"


def test_the_memory_estimate_counts_every_gradient_row_of_every_count():
    size = ParamLayout.from_config(bench_config("base")).size   # the default architecture's
    assert size > ParamLayout.from_config(engine.preset("base")).size   # its head is untied
    one = scaling_bytes("base", BATCH, [1])
    assert scaling_bytes("base", BATCH, [2]) - one == 4 * size          # one more row
    assert scaling_bytes("base", BATCH, [1, 1]) == 2 * one               # all held at once
    assert scaling_bytes("base", BATCH, [64] * 8) > 10 << 30             # the issue's ~11 GB
