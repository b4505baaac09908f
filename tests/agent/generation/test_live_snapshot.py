"""Live snapshots, the readers' side: `cllm generate` loads the running cycle's snapshot
while it trains and the committed checkpoint once it commits (`--committed`: always the
committed one); a snapshot whose file fails its SHA-256, whose base is no longer the
latest, or whose cycle ended is ignored with a warning. The writer's side:
tests/agent/training/test_snapshot.py."""
from __future__ import annotations

import json
import logging

import numpy as np
from click.testing import CliRunner

from agent.cli import main
from agent.continuous_trainer import ContinuousTrainer
from agent.generation.checkpoint import load_serving_checkpoint, serving_key
from agent.training.model_state import live_path, live_sidecar_path, recorded_checkpoints
from agent.training.snapshot import read_sidecar
from store.cycles import finish_cycle
from store.models import CycleStatus
from tests.agent.training.test_snapshot import (LIVE, add_doc, env,  # noqa: F401 (env: fixture)
                                                given, live_files, publish)


def generate_json(data, url, *flags):
    args = (["--database-url", url] if url else []) + [
        "generate", "--data-dir", str(data), "--json", "--max-tokens", "2", "--seed", "1",
        *flags, "every"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.output[r.output.index("{"):])


def test_a_running_cycle_publishes_snapshots_generate_loads_them_until_it_commits(env):
    store, data, url = env
    tr = ContinuousTrainer(store, data, LIVE)
    first = tr.run_cycle(given(store, add_doc(store, "lattice")), "train", steps=4)
    assert not any(p.exists() for p in live_files(data))   # a first cycle has no base
    seen = {}

    def published():    # the trainer's listeners: after each snapshot, and after the commit
        if live_sidecar_path(data).exists() and "listener" not in seen:
            seen["listener"] = (load_serving_checkpoint(store, data, weights="float32"),
                                tr.state.serving_model().params.copy())
    tr.checkpoint_listeners.append(published)

    def step(cycle_id, i, planned, loss):
        if i == 8:          # the cycle is running: what `cllm generate` loads now
            seen["cycle_id"] = cycle_id
            seen["live"] = generate_json(data, url)
            seen["committed"] = generate_json(data, url, "--committed")
            seen["files"] = [p.exists() for p in live_files(data)]
    tr.progress = step
    rep = tr.run_cycle(given(store, add_doc(store, "spheres")), "train", steps=12)

    assert seen["cycle_id"] == rep.cycle_id and seen["files"] == [True] * 3
    live = seen["live"]
    assert live["live"] is True and live["cycle"] == rep.cycle_id
    assert live["base_cycle"] == first.cycle_id and 1 < live["cycle_step"] < 8
    assert live["step"] == first.run.steps + live["cycle_step"]
    assert live["checkpoint_path"] == str(live_path(data))
    committed = seen["committed"]
    assert committed["live"] is False and committed["cycle"] == first.cycle_id
    assert committed["checkpoint_sha256"] == first.checkpoint_sha256
    ckpt, served = seen["listener"]          # the snapshot is the served (EMA) weights
    assert ckpt.live is not None and ckpt.ref.cycle_id == first.cycle_id
    assert np.array_equal(ckpt.state.model.params, served)
    # the commit deleted the snapshot: the committed checkpoint is served again
    assert not any(p.exists() for p in live_files(data))
    after = load_serving_checkpoint(store, data)
    assert after.live is None and after.cycle == rep.cycle_id
    assert after.sha256 == rep.checkpoint_sha256 and after.describe()["live"] is False


def test_a_stale_mismatching_or_ended_snapshot_is_ignored_with_a_warning(env, caplog):
    store, data, _ = env
    tr = ContinuousTrainer(store, data, LIVE.replace(snapshot_seconds=0))
    tr.run_cycle(given(store, add_doc(store, "lattice")), "train", steps=3)
    tr.run_cycle(given(store, add_doc(store, "spheres")), "train", steps=3)
    latest, older = recorded_checkpoints(store)[:2]
    assert latest.is_latest and not live_sidecar_path(data).exists()

    cid = publish(store, data, tr.state, latest)
    got = load_serving_checkpoint(store, data)
    assert got.live is not None and got.cycle == cid and got.ref.id == latest.id
    assert got.key == serving_key(store, data) == (latest.id, read_sidecar(data).sha256)
    assert serving_key(store, data, committed=True) == (latest.id, None)

    raw = bytearray(live_path(data).read_bytes())      # the file is not the one published
    raw[-1] ^= 0xFF
    live_path(data).write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        got = load_serving_checkpoint(store, data)
    assert got.live is None and got.ref.id == latest.id
    assert "ignoring the live snapshot" in caplog.text and "SHA-256" in caplog.text

    caplog.clear()
    publish(store, data, tr.state, older)               # its base is no longer the latest
    with caplog.at_level(logging.WARNING):
        got = load_serving_checkpoint(store, data)
    assert got.live is None and got.ref.id == latest.id
    assert "no longer the latest" in caplog.text and serving_key(store, data) == got.key

    caplog.clear()
    cid = publish(store, data, tr.state, latest)        # its cycle failed: never served
    with store.session() as s:
        finish_cycle(s, cid, status=CycleStatus.FAILED, error="boom")
    with caplog.at_level(logging.WARNING):
        got = load_serving_checkpoint(store, data)
    assert got.live is None and f"cycle {cid} is not running" in caplog.text
    assert load_serving_checkpoint(store, data, committed=True).live is None
