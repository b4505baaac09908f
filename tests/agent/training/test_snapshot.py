"""Live snapshots, the writer's side: a running cycle publishes its served weights between
steps (a cycle with a committed base only), its commit deletes them, recovery deletes a
leftover, and the store (ledger, cycles, vocabulary, checkpoints) is the same with and
without them. In-process, tiny preset; the snapshot interval is tiny, so every step after
the first publishes. The readers' side: tests/agent/generation/test_live_snapshot.py."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from safetensors import safe_open
from sqlalchemy import inspect, select

from agent.continuous_trainer import ContinuousTrainer, TrainerSettings
from agent.training.model_state import (live_path, live_sidecar_path, load_model_state,
                                        new_model_state, recorded_checkpoints, tokenizer_path)
from agent.training.snapshot import SnapshotPublisher, read_sidecar, snapshot_publisher
from store import open_store
from store.cycles import start_cycle
from store.models import (Checkpoint, Cycle, CycleDocument, CycleStatus, Document, EvalResult,
                          VocabEntry)
from tests.agent.test_continuous_trainer import add_text

LIVE = TrainerSettings(preset="tiny", workers=1, min_cycle_tokens=200, max_wait=3600,
                       batch_size=4, max_new_tokens=20, replay_fraction=0.3, cycle_seconds=120,
                       snapshot_seconds=1e-6)
TEXTS = {"lattice": "the crystal lattice hums a quiet tune over the prime spiral. ",
         "spheres": "every sphere touches twelve neighbours in the kissing arrangement. ",
         "clock": "the clock face holds twelve positions and the primes fall on four. "}


def add_doc(store, source: str, reps: int = 20) -> int:
    return add_text(store, source, f"{source}: " + TEXTS[source] * reps, source)


def given(store, *ids):
    """run_cycle's documents: store ids with their text."""
    from agent.training.learn import Doc
    with store.session(read_only=True) as s:
        return [(i, Doc(d.uri, d.source, d.text)) for i in ids for d in [s.get(Document, i)]]


def live_files(data):
    return [live_sidecar_path(data), live_path(data), tokenizer_path(live_path(data))]


def publish(store, data, state, base, step: int = 3) -> int:
    """A live snapshot of `state` for a new running cycle started from `base`; its cycle id."""
    with store.session() as s:
        cid = start_cycle(s, trigger="test").id
    assert SnapshotPublisher(data, state, cid, base, 1.0).publish(step) is not None
    return cid


def test_a_young_model_is_published_more_often(tmp_path):
    """Every YOUNG_SHARE of the model's training time so far, at least MIN_EVERY_S apart,
    until --snapshot-seconds is the smaller; never again after a failed write."""
    from agent.training import snapshot as snap

    class State:                            # what the interval reads: the model's step
        step = 0

    pub = SnapshotPublisher(tmp_path, State(), 1, None, every_s=15.0)
    written = []
    pub.publish = lambda i: written.append(i)
    rate = 10.0                              # steps a second
    for i in range(1, 4801):                 # eight minutes of a new model's training
        pub.step(i, i / rate)
    times = [i / rate for i in written]
    gaps = np.diff([0.1] + times)
    assert gaps.min() >= snap.MIN_EVERY_S - 1e-9 and gaps.max() <= 15.0 + 0.1 + 1e-9
    # at one minute, a snapshot is at most 5% of a minute old; later every 15 s
    assert 60 - max(t for t in times if t <= 60) <= snap.YOUNG_SHARE * 60 + 0.1
    assert np.allclose(gaps[-5:], 15.0, atol=0.11)
    old = SnapshotPublisher(tmp_path, State(), 1, None, every_s=15.0)
    old.state.step = 100_000                 # an old model: every --snapshot-seconds
    assert old.interval(10, 1.0) == 15.0
    pub.every_s = float("inf")               # what a failed write sets
    assert pub.interval(4800, 480.0) == float("inf")


@pytest.fixture
def env(store_target):
    """(store, data directory, database URL or None) on each backend."""
    store = store_target.open()
    store_target.data_dir.mkdir(parents=True, exist_ok=True)
    yield store, store_target.data_dir, store_target.url
    store.close()


def test_a_running_cycle_publishes_its_served_weights_and_its_commit_deletes_them(env):
    store, data, _ = env
    tr = ContinuousTrainer(store, data, LIVE)
    assert snapshot_publisher(store, data, new_model_state("tiny"), 1, 1.0) is None  # no base
    first = tr.run_cycle(given(store, add_doc(store, "lattice")), "train", steps=4)
    assert not any(p.exists() for p in live_files(data))   # a first cycle has no base
    assert snapshot_publisher(store, data, tr.state, 2, 0.0) is None    # 0: off
    seen = []

    def published():    # the trainer's listeners: after each snapshot, and after the commit
        snap = read_sidecar(data)
        if snap is not None:
            state = load_model_state(snap.path, expected_sha256=snap.sha256)
            seen.append((snap, state, tr.state.serving_model().params.copy()))
    tr.checkpoint_listeners.append(published)
    rep = tr.run_cycle(given(store, add_doc(store, "spheres")), "train", steps=12)

    assert seen, "no snapshot was published"
    base = recorded_checkpoints(store)[1]
    for snap, state, served in seen:     # each one the served (EMA) weights of its step
        assert (snap.cycle_id, snap.base_id, snap.base_sha256, snap.base_cycle) == (
            rep.cycle_id, base.id, first.checkpoint_sha256, first.cycle_id)
        assert snap.step == first.run.steps + snap.cycle_step and 1 < snap.cycle_step <= 12
        assert (state.cycle, state.step, state.optimizer, state.ema) == (
            rep.cycle_id, snap.step, None, None)
        assert np.array_equal(state.model.params, served)
        assert len(state.tokenizer) == rep.vocab_after
    assert [s.cycle_step for s, _, _ in seen] == sorted({s.cycle_step for s, _, _ in seen})
    assert not any(p.exists() for p in live_files(data))   # the commit deleted it
    with store.session(read_only=True) as s:   # never in the store
        assert [c.path for c in s.scalars(select(Checkpoint))] == [
            str(first.checkpoint_path), str(rep.checkpoint_path)]


def test_recovery_deletes_a_leftover_snapshot(env):
    store, data, _ = env
    tr = ContinuousTrainer(store, data, LIVE)
    rep = tr.run_cycle(given(store, add_doc(store, "lattice")), "train", steps=3)
    cid = publish(store, data, tr.state, recorded_checkpoints(store)[0])   # then a crash
    assert all(p.exists() for p in live_files(data))
    removed = ContinuousTrainer(store, data, LIVE).recover()
    assert sorted(removed) == sorted(live_files(data))
    assert not any(p.exists() for p in live_files(data))
    with store.session() as s:
        assert s.get(Cycle, cid).status == CycleStatus.INTERRUPTED
    assert ContinuousTrainer(store, data, LIVE).load_latest().path == rep.checkpoint_path


VOLATILE = {"started", "finished", "tokens_per_s", "path", "created", "recorded"}


def store_rows(store) -> dict:
    """Every row of the tables a cycle writes, without times and file paths."""
    out = {}
    with store.session(read_only=True) as s:
        for model in (Cycle, CycleDocument, Document, VocabEntry, EvalResult, Checkpoint):
            cols = [c.key for c in inspect(model).columns if c.key not in VOLATILE]
            rows = []
            for obj in s.scalars(select(model).order_by(*inspect(model).primary_key)):
                row = {c: getattr(obj, c) for c in cols}
                if model is Checkpoint:     # the file's SHA-256 varies with its header's key
                    with safe_open(obj.path, "np") as f:     # order: compare what it holds
                        row["sha256"] = f.metadata()      # (payload_sha256 of the tensors)
                if isinstance(row.get("schedule"), dict):
                    row["schedule"] = {k: v for k, v in row["schedule"].items()
                                       if k != "seconds"}
                rows.append({k: v for k, v in row.items() if not isinstance(v, dt.datetime)})
            out[model.__name__] = rows
    return out


def test_the_store_is_the_same_with_and_without_snapshots(tmp_path):
    """Same seed, same documents: snapshots change no row (the ledger, the cycles, the
    vocabulary, the evaluations) and no checkpoint's tensors or metadata. (max_steps fixes
    the planned steps, which otherwise come from the last cycle's measured speed.)"""
    dumps, published = [], []
    for every in (0.0, 1e-6):
        data = tmp_path / f"every-{every}"
        store = open_store(data)
        try:
            tr = ContinuousTrainer(store, data, LIVE.replace(snapshot_seconds=every,
                                                             max_steps=500))
            seen = []
            tr.checkpoint_listeners.append(lambda: seen.append(live_sidecar_path(data).exists()))
            add_doc(store, "lattice")
            add_doc(store, "spheres")
            assert tr.run_pending("tokens") is not None
            add_doc(store, "clock", reps=40)    # a second cycle: it has a committed base
            assert tr.run_pending("tokens") is not None
            published.append(sum(seen))
            dumps.append(store_rows(store))
        finally:
            store.close()
    assert published[0] == 0 and published[1] > 0
    assert dumps[0] == dumps[1]
    assert len(dumps[0]["Cycle"]) == 2 and dumps[0]["CycleDocument"]
