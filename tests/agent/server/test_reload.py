"""Which checkpoint a server holds: 503 until the first cycle commits, then each newer
committed checkpoint is loaded (woken by the file watcher, confirmed by the store); a pinned
cycle stays; a checkpoint failing its SHA-256 is refused for the previous one."""
from __future__ import annotations

import json
import threading

import httpx
import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.generation.checkpoint import load_serving_checkpoint
from agent.server.app import Server, Service
from agent.server.config import ServeConfig
from agent.training.model_state import COMMIT_MARKER
from engine.errors import CllmError
from store import open_store
from tests.agent.server.conftest import train_tiny, wait_loaded


def test_health_is_503_until_a_checkpoint_then_reloads_each_new_one(serve, corpus, tmp_path):
    data = tmp_path / "data"
    open_store(data).close()                  # a store, no cycle yet
    server = serve(data)
    holder = server.service.holder
    loads = []
    loaded = threading.Condition()

    def on_load(ckpt):
        with loaded:
            loads.append(ckpt.cycle)
            loaded.notify_all()
    holder.listeners.append(on_load)
    r = httpx.get(server.url + "/health")
    assert r.status_code == 503 and r.headers["retry-after"]
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x"})
    assert r.status_code == 503 and r.json()["error"]["message"].startswith("no model loaded")
    assert httpx.get(server.url + "/v1/models").json()["data"] == []
    for cycle in (1, 2):
        summary = train_tiny(corpus, data)
        with loaded:
            assert loaded.wait_for(lambda: cycle in loads, timeout=60), loads
        h = httpx.get(server.url + "/health").json()
        assert h["cycle"] == cycle and h["checkpoint_sha256"] == summary["checkpoint_sha256"]
        assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"].endswith(
            f"-cycle-{cycle}")
    assert (data / "checkpoints" / COMMIT_MARKER).exists()
    assert loads == [1, 2] and holder.loads == 2


def test_pinned_cycle_is_served_and_a_missing_one_is_named(serve, trained):
    server = serve(trained, cycle=1)
    ckpt = wait_loaded(server)
    assert ckpt.cycle == 1
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"].endswith("-cycle-1")
    with open_store(trained) as store, pytest.raises(CllmError) as e:
        load_serving_checkpoint(store, trained, cycle=9)
    assert "cycle 9 has no checkpoint" in e.value.one_line()
    assert "cycles with one: 1, 2" in e.value.one_line()


def test_a_checkpoint_failing_its_hash_is_refused_for_the_previous(corpus, tmp_path, caplog):
    data = tmp_path / "data"
    train_tiny(corpus, data)
    s2 = train_tiny(corpus, data)
    with open_store(data) as store:
        assert load_serving_checkpoint(store, data).ref.sha256 == s2["checkpoint_sha256"]
        path = data / "checkpoints" / "ckpt-000002.safetensors"
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0xFF
        path.write_bytes(bytes(raw))
        got = load_serving_checkpoint(store, data)
        assert got.cycle == 1 and "SHA-256" in caplog.text
        path.unlink()
        (data / "checkpoints" / "ckpt-000001.safetensors").write_bytes(b"junk")
        with pytest.raises(CllmError, match="could be loaded"):
            load_serving_checkpoint(store, data)


def test_reload_and_views_on_each_store_backend(store_target, corpus):
    """On PostgreSQL too (no database file to watch): the trainer's commit marker wakes
    the server, which confirms the new checkpoint with the store."""
    data, url = store_target.data_dir, store_target.url

    def train():
        args = (["--database-url", url] if url else []) + [
            "train", str(corpus), "--data-dir", str(data), "--preset", "tiny", "--steps", "4",
            "--batch-size", "4", "--workers", "1", "--json"]
        r = CliRunner().invoke(main, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return json.loads(r.output[r.output.index("{"):])

    train()
    store = store_target.open()
    server = Server(Service(store, data, ServeConfig(port=0)))
    loads, loaded = [], threading.Condition()

    def on_load(ckpt):
        with loaded:
            loads.append(ckpt.cycle)
            loaded.notify_all()
    server.service.holder.listeners.append(on_load)
    server.start()
    try:
        with loaded:
            assert loaded.wait_for(lambda: 1 in loads, timeout=60)
        second = train()
        with loaded:
            assert loaded.wait_for(lambda: second["cycle_id"] in loads, timeout=60), loads
        cycles = httpx.get(server.url + "/api/cycles").json()
        assert [c["id"] for c in cycles] == [1, second["cycle_id"]]
        assert httpx.get(server.url + "/health").json()["checkpoint_sha256"] == \
            second["checkpoint_sha256"]
    finally:
        server.stop()
        store.close()
