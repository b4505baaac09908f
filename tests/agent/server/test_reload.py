"""Which checkpoint a server holds: 503 until the first cycle commits, then each newer
committed checkpoint is loaded (woken by the file watcher, confirmed by the store); a pinned
cycle stays; a checkpoint failing its SHA-256 is refused for the previous one; the running
cycle's live snapshot is served on its file event until the next commit."""
from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.generation.checkpoint import load_serving_checkpoint
from agent.server.app import Server, Service
from agent.server.config import ServeConfig
from agent.training.model_state import COMMIT_MARKER, load_recorded_model_state
from agent.training.snapshot import SnapshotPublisher
from engine.errors import CllmError
from store import open_store
from store.cycles import start_cycle
from tests.agent.server.conftest import train_tiny, wait_loaded


def test_health_is_503_until_a_checkpoint_then_reloads_each_new_one(serve, corpus, tmp_path, http):
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
    r = http.get(server.url + "/health")
    assert r.status_code == 503 and r.headers["retry-after"]
    r = http.post(server.url + "/v1/completions", json={"prompt": "x"})
    assert r.status_code == 503 and r.json()["error"]["message"].startswith("no model loaded")
    assert http.get(server.url + "/v1/models").json()["data"] == []
    for cycle in (1, 2):
        summary = train_tiny(corpus, data)
        with loaded:
            assert loaded.wait_for(lambda: cycle in loads, timeout=60), loads
        h = http.get(server.url + "/health").json()
        assert h["cycle"] == cycle and h["checkpoint_sha256"] == summary["checkpoint_sha256"]
        assert http.get(server.url + "/v1/models").json()["data"][0]["id"].endswith(
            f"-cycle-{cycle}")
    assert (data / "checkpoints" / COMMIT_MARKER).exists()
    assert loads == [1, 2] and holder.loads == 2


def test_pinned_cycle_is_served_and_a_missing_one_is_named(serve, trained, http):
    server = serve(trained, cycle=1)
    ckpt = wait_loaded(server)
    assert ckpt.cycle == 1
    assert http.get(server.url + "/v1/models").json()["data"][0]["id"].endswith("-cycle-1")
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


def test_reload_and_views_on_each_store_backend(store_target, corpus, http):
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
    http.add(server)
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
        cycles = http.get(server.url + "/api/cycles").json()
        assert [c["id"] for c in cycles] == [1, second["cycle_id"]]
        assert http.get(server.url + "/health").json()["checkpoint_sha256"] == \
            second["checkpoint_sha256"]
    finally:
        server.stop()
        store.close()


def test_a_live_snapshot_is_served_on_its_file_event_until_the_next_commit(serve, corpus,
                                                                            tmp_path, http):
    """The trainer's live snapshot (here published by hand for a running cycle) wakes the
    server like a commit: it serves it (/v1/models, /health and /api/status say so), until
    the next start recovers it away and the next cycle commits; --committed never takes it."""
    data = tmp_path / "data"
    first = train_tiny(corpus, data)
    server = serve(data)
    pinned = serve(data, committed=True)
    holder = server.service.holder
    loads, loaded = [], threading.Condition()

    def on_load(ckpt):
        with loaded:
            loads.append((ckpt.cycle, ckpt.live is not None))
            loaded.notify_all()
    assert wait_loaded(server).live is None
    holder.listeners.append(on_load)              # the loads after the first
    wait_loaded(pinned)
    with open_store(data) as store:
        state, base = load_recorded_model_state(store)
        with store.session() as s:
            running = start_cycle(s, trigger="test").id
        snap = SnapshotPublisher(data, state, running, base, 1.0).publish(5)
        with loaded:
            assert loaded.wait_for(lambda: (running, True) in loads, timeout=60), loads
        assert pinned.service.holder.reload() is False    # --committed: no snapshot
        assert pinned.service.holder.current.live is None
    model = http.get(server.url + "/v1/models").json()["data"][0]
    assert model["id"].endswith(f"-cycle-{running}-live") and model["live"] is True
    assert (model["cycle"], model["step"], model["cycle_step"], model["base_cycle"]) == (
        running, snap.step, 5, first["cycle_id"])
    assert model["checkpoint_sha256"] == snap.sha256
    health = http.get(server.url + "/health").json()
    assert health["live"] is True and health["checkpoint_sha256"] == snap.sha256
    status = http.get(server.url + "/api/status").json()
    assert status["live_snapshot"]["sha256"] == snap.sha256
    assert status["last_checkpoint"]["sha256"] == first["checkpoint_sha256"]
    r = http.post(server.url + "/v1/completions", json={"prompt": "every", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["model"].endswith("-live")
    second = train_tiny(corpus, data)     # recovery deletes the snapshot, the cycle commits
    with loaded:
        assert loaded.wait_for(lambda: (second["cycle_id"], False) in loads, timeout=60), loads
    assert http.get(server.url + "/health").json()["live"] is False
    assert http.get(server.url + "/api/status").json()["live_snapshot"] is None
    # (the committed one again in between if the server woke after the recovery, before
    # the commit: its snapshot was gone and its cycle interrupted)
    assert loads[0] == (running, True)
    assert set(loads[1:-1]) <= {(first["cycle_id"], False)}
    assert loads[-1] == (second["cycle_id"], False)
