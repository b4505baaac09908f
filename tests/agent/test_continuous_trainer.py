"""The continuous trainer: cycles recorded in the store in one transaction, crash safety,
checkpoint hash checks. In-process, tiny preset, a few steps per cycle."""
import hashlib
import logging
import math
import threading

import pytest
from sqlalchemy import func, select

from agent.continuous_trainer import (ContinuousTrainer, CycleInterrupted,
                                      TrainerSettings)
from engine.checkpoint import file_sha256
from engine.errors import CllmError
from store.models import Checkpoint, Cycle, Document, EvalResult, VocabEntry

SETTINGS = TrainerSettings(preset="tiny", workers=1, min_cycle_tokens=200, max_wait=3600,
                           steps=6, batch_size=4, max_new_tokens=20, replay_fraction=0.3)

TEXTS = {
    "lattice": "the crystal lattice hums a quiet tune over the prime spiral. ",
    "spheres": "every sphere touches twelve neighbours in the kissing arrangement. ",
    "clock": "the clock face holds twelve positions and the primes fall on four. ",
}


def add_doc(store, name, source, reps=30):
    text = f"{name}: " + TEXTS[source] * reps
    with store.session() as s:
        d = Document(uri=f"file:///w/{source}/{name}.txt", source=source, text=text,
                     sha256=hashlib.sha256(text.encode()).hexdigest(), size_bytes=len(text),
                     status="pending")
        s.add(d)
        s.flush()
        return d.id


@pytest.fixture
def env(store_target):
    """A store on each backend (SQLite, and PostgreSQL when the server is there) and the
    data directory that holds the checkpoints."""
    store = store_target.open()
    store_target.data_dir.mkdir(parents=True, exist_ok=True)
    yield store, store_target.data_dir
    store.close()


def test_a_cycle_is_recorded_with_its_checkpoint_vocab_delta_and_documents(env):
    store, data = env
    ids = [add_doc(store, "a", "lattice"), add_doc(store, "b", "spheres")]
    tr = ContinuousTrainer(store, data, SETTINGS)
    assert tr.recover() == []
    assert tr.due()[0] == "tokens"
    rep = tr.run_pending("tokens")
    assert rep.doc_ids == ids and rep.replay_ids == []
    assert rep.checkpoint_sha256 == file_sha256(rep.checkpoint_path)
    with store.session() as s:
        cyc = s.get(Cycle, rep.cycle_id)
        assert cyc.status == "completed" and cyc.steps == 6 and cyc.docs_new == 2
        assert cyc.vocab_size_after > cyc.vocab_size_before
        ck = s.scalars(select(Checkpoint).where(Checkpoint.is_latest.is_(True))).one()
        assert (ck.path, ck.sha256, ck.cycle_id) == (str(rep.checkpoint_path),
                                                     rep.checkpoint_sha256, rep.cycle_id)
        docs = s.scalars(select(Document).order_by(Document.id)).all()
        assert [(d.status, d.cycle_id) for d in docs] == [("trained", rep.cycle_id)] * 2
        delta = s.scalars(select(VocabEntry).where(VocabEntry.cycle_id == rep.cycle_id)).all()
        assert sorted(v.token_id for v in delta) == sorted(rep.run.new_token_ids)
        assert delta and all(v.document_id in ids for v in delta)
        assert all(len(v.token_bytes) >= 2 for v in delta)
        evals = {e.source: e for e in s.scalars(select(EvalResult))}
        assert set(evals) == {"lattice", "spheres"}
        assert all(e.forgetting == 0.0 for e in evals.values())
        assert all(e.n_tokens > 0 for e in evals.values())
    assert tr.due() == (None, None)


def test_second_cycle_replays_earlier_documents_and_records_forgetting(env):
    store, data = env
    first = [add_doc(store, "a", "lattice"), add_doc(store, "b", "spheres")]
    tr = ContinuousTrainer(store, data, SETTINGS)
    tr.run_pending("tokens")
    new = add_doc(store, "c", "clock")
    rep = tr.run_pending("tokens")
    assert rep.doc_ids == [new] and sorted(rep.replay_ids) == first
    with store.session() as s:
        cyc = s.get(Cycle, rep.cycle_id)
        assert cyc.docs_replayed == 2 and cyc.schedule["replay_document_ids"] == first
        evals = {e.source: e for e in s.scalars(
            select(EvalResult).where(EvalResult.cycle_id == rep.cycle_id))}
        assert set(evals) == {"lattice", "spheres", "clock"}
        assert evals["clock"].forgetting == 0.0
        assert evals["lattice"].forgetting == pytest.approx(
            evals["lattice"].val_loss - evals["lattice"].baseline_loss)
        assert s.scalars(select(Checkpoint).where(Checkpoint.is_latest.is_(True))).one().cycle_id \
            == rep.cycle_id
    # a fresh trainer resumes from the latest checkpoint (its vocabulary included)
    tr2 = ContinuousTrainer(store, data, SETTINGS)
    assert len(tr2.load_latest().tokenizer) == rep.vocab_after


def test_a_failed_commit_leaves_documents_pending_and_no_checkpoint_file(env, monkeypatch):
    store, data = env
    add_doc(store, "a", "lattice")
    tr = ContinuousTrainer(store, data, SETTINGS)

    def boom(*a, **k):
        raise RuntimeError("disk vanished")
    monkeypatch.setattr(tr, "_commit", boom)
    with pytest.raises(RuntimeError):
        tr.run_pending("tokens")
    assert not list((data / "checkpoints").glob("ckpt-*"))
    with store.session() as s:
        assert s.scalars(select(Document.status)).all() == ["pending"]
        assert s.scalars(select(Cycle.status)).all() == ["failed"]
    monkeypatch.undo()
    rep = tr.run_pending("tokens")             # the next cycle picks the document up
    assert rep.checkpoint_path.exists()


def test_recover_removes_a_checkpoint_whose_cycle_never_committed(env):
    store, data = env
    add_doc(store, "a", "lattice")
    tr = ContinuousTrainer(store, data, SETTINGS)
    tr.run_pending("tokens")
    with store.session() as s:                  # a cycle that crashed after its checkpoint
        c = Cycle(trigger="tokens", status="running")
        s.add(c)
        s.flush()
        orphan = data / "checkpoints" / f"ckpt-{c.id:06d}.safetensors"
    orphan.write_bytes(b"half a checkpoint")
    orphan_tok = orphan.with_name(orphan.name.replace(".safetensors", ".tokenizer.json"))
    orphan_tok.write_text("{}")
    lone_tok = data / "checkpoints" / f"ckpt-{c.id + 1:06d}.tokenizer.json"   # its checkpoint
    lone_tok.write_text("{}")                   # was never written (e.g. NaN weights refused)
    with store.session() as s:
        s.add(Cycle(id=c.id + 1, trigger="tokens", status="running"))
    killed = data / "checkpoints" / ".ckpt-000009.safetensors.x1y2.tmp"     # a killed write
    killed.write_bytes(b"partial")
    kept = data / "checkpoints" / "ckpt-000001.safetensors"
    removed = ContinuousTrainer(store, data, SETTINGS).recover()
    assert sorted(removed) == sorted([orphan, lone_tok, killed])
    assert not any(p.exists() for p in (orphan, orphan_tok, lone_tok, killed))
    assert kept.exists() and kept.with_name("ckpt-000001.tokenizer.json").exists()
    with store.session() as s:
        assert sorted(s.scalars(select(Cycle.status))) == ["completed", "interrupted", "interrupted"]


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_one(env, caplog):
    store, data = env
    tr = ContinuousTrainer(store, data, SETTINGS)
    add_doc(store, "a", "lattice")
    r1 = tr.run_pending("tokens")
    add_doc(store, "b", "spheres")
    r2 = tr.run_pending("tokens")
    raw = bytearray(r2.checkpoint_path.read_bytes())
    raw[-10] ^= 0xFF
    r2.checkpoint_path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        state = ContinuousTrainer(store, data, SETTINGS).load_latest()
    assert state.path == r1.checkpoint_path and len(state.tokenizer) == r1.vocab_after
    assert any("refusing checkpoint" in r.message and str(r2.checkpoint_path) in r.message
               for r in caplog.records)
    # the store follows the model back: cycle 2 is undone, its document will be trained
    # again, and its vocabulary is gone so the next cycle's tokens get consistent ids
    with store.session() as s:
        c2 = s.get(Cycle, r2.cycle_id)
        assert c2.status == "failed" and "rolled back" in c2.error
        doc_b = s.get(Document, r2.doc_ids[0])
        assert doc_b.status == "pending" and doc_b.cycle_id is None
        assert s.get(Document, r1.doc_ids[0]).status == "trained"
        assert s.scalar(select(func.max(VocabEntry.token_id))) == r1.vocab_after - 1
        assert s.scalars(select(Checkpoint).where(Checkpoint.is_latest)).one().cycle_id == 1
    tr2 = ContinuousTrainer(store, data, SETTINGS)
    tr2.load_latest()
    r3 = tr2.run_pending("tokens")
    assert r3.doc_ids == r2.doc_ids
    with store.session() as s:
        stored = dict(s.execute(select(VocabEntry.token_id, VocabEntry.token_bytes)).all())
    tok = tr2.state.tokenizer
    assert len(stored) == len(tok) and all(stored[i] == tok.token_bytes(i) for i in stored)


def test_checkpoints_are_found_from_any_working_directory(env, tmp_path, monkeypatch):
    store, data = env
    monkeypatch.chdir(data.parent)
    add_doc(store, "a", "lattice")
    rel = ContinuousTrainer(store, data.relative_to(data.parent), SETTINGS)
    rep = rel.run_pending("tokens")
    assert rep.checkpoint_path.is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    state = ContinuousTrainer(store, data, SETTINGS).load_latest()
    assert state.step == rel.state.step and state.step > 0


def test_stop_interrupts_at_a_step_boundary_and_keeps_documents_pending(env):
    store, data = env
    add_doc(store, "a", "lattice")
    stop = threading.Event()
    tr = ContinuousTrainer(store, data, SETTINGS.replace(steps=50), stop=stop,
                           progress=lambda c, i, n, loss: stop.set() if i == 3 else None)
    with pytest.raises(CycleInterrupted):
        tr.run_pending("tokens")
    with store.session() as s:
        assert s.scalars(select(Document.status)).all() == ["pending"]
        assert s.scalars(select(Cycle.status)).all() == ["interrupted"]
    assert not list((data / "checkpoints").glob("ckpt-*.safetensors"))


def test_age_trigger_fires_once_the_oldest_pending_document_waited_max_wait(env):
    store, data = env
    add_doc(store, "a", "lattice", reps=1)      # far fewer tokens than min_cycle_tokens
    tr = ContinuousTrainer(store, data, SETTINGS)
    trigger, wait = tr.due()
    assert trigger is None and 3500 < wait <= 3600
    assert ContinuousTrainer(store, data, SETTINGS.replace(max_wait=0)).due()[0] == "age"
    # while the agent's start-up crawl runs, enough tokens do not start a cycle; age still does
    add_doc(store, "b", "spheres")
    assert tr.due()[0] == "tokens"
    trigger, wait = tr.due(tokens_trigger=False)
    assert trigger is None and 3500 < wait <= 3600
    assert ContinuousTrainer(store, data, SETTINGS.replace(max_wait=0)).due(
        tokens_trigger=False)[0] == "age"


def test_documents_with_nothing_to_train_on_are_marked_failed_not_retried(env):
    store, data = env
    with store.session() as s:
        s.add(Document(uri="file:///w/x.txt", source="x", text="a", sha256="0" * 64,
                       status="pending"))
    tr = ContinuousTrainer(store, data, SETTINGS.replace(max_wait=0))
    assert tr.due()[0] == "age"
    assert tr.run_pending("age") is None
    with store.session() as s:
        d = s.scalars(select(Document)).one()
        assert d.status == "failed" and "no trainable text" in d.reason
        assert s.scalars(select(Cycle)).all() == []
    assert tr.due() == (None, None)


def test_init_and_crystalline_weight_reach_a_new_model_and_its_training(env):
    store, data = env
    add_doc(store, "a", "lattice")
    tr = ContinuousTrainer(store, data, SETTINGS.replace(init="lattice", crystalline_weight=0.1))
    st = tr.load_latest()
    assert st.model.config.init == "lattice"
    assert tr.settings.train_config(6).crystalline_weight == 0.1
    rep = tr.run_pending("tokens")
    assert rep is not None and math.isfinite(rep.run.loss_end)
    for bad in (dict(crystalline_weight=-0.1), dict(init="spiral")):
        with pytest.raises(CllmError):
            SETTINGS.replace(**bad)


