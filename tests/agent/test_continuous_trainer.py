"""The continuous trainer: cycles recorded in the store in one transaction, the ledger (a
backlog learned over bounded cycles to its budget, new arrivals first), crash safety,
checkpoint hash checks and retention. In-process, tiny preset, small documents."""
import errno
import hashlib
import logging
import math
import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from agent import continuous_trainer
from agent.continuous_trainer import (ContinuousTrainer, CycleInterrupted,
                                      TrainerSettings)
from agent.daemon import Agent, AgentConfig
from agent.training import loop as trainer_loop
from agent.training.fim import SPECIALS as FIM_SPECIALS
from engine.checkpoint import file_sha256
from engine.errors import CllmError
from store import controls
from store.models import Checkpoint, Cycle, CycleDocument, Document, EvalResult, VocabEntry

# the backlog's rules, stopping at the passes (consolidation past them:
# tests/agent/training/test_consolidation.py)
SETTINGS = TrainerSettings(preset="tiny", workers=1, min_cycle_tokens=200, max_wait=3600,
                           batch_size=4, max_new_tokens=20, replay_fraction=0.3,
                           cycle_seconds=120, keep_learning="off")
# ids 0..255 the bytes, 256 the end of document, then the FIM and file tokens (FIM training is
# on by default: a new model's tokenizer takes them before it learns any): learned tokens
# start after them
FIRST_LEARNED = 257 + len(FIM_SPECIALS)

TEXTS = {
    "lattice": "the crystal lattice hums a quiet tune over the prime spiral. ",
    "spheres": "every sphere touches twelve neighbours in the kissing arrangement. ",
    "clock": "the clock face holds twelve positions and the primes fall on four. ",
}


def add_text(store, name, text, source="notes"):
    with store.session() as s:
        d = Document(uri=f"file:///w/{source}/{name}.txt", source=source, text=text,
                     sha256=hashlib.sha256(text.encode()).hexdigest(), size_bytes=len(text),
                     status="pending")
        s.add(d)
        s.flush()
        return d.id


def add_doc(store, name, source, reps=10):
    return add_text(store, name, f"{name}: " + TEXTS[source] * reps, source)


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
        assert cyc.status == "completed" and cyc.docs_new == 2 and rep.ended_by == "backlog"
        assert cyc.steps == rep.run.steps > 0 and cyc.schedule["ended_by"] == "backlog"
        assert cyc.vocab_size_after > cyc.vocab_size_before
        ck = s.scalars(select(Checkpoint).where(Checkpoint.is_latest.is_(True))).one()
        assert (ck.path, ck.sha256, ck.cycle_id) == (str(rep.checkpoint_path),
                                                     rep.checkpoint_sha256, rep.cycle_id)
        docs = s.scalars(select(Document).order_by(Document.id)).all()
        assert [(d.status, d.cycle_id) for d in docs] == [("trained", rep.cycle_id)] * 2
        for d in docs:      # two passes of the training text, to the byte (a token over)
            assert d.trainable_bytes == len(d.text[:int(len(d.text) * 0.9)].encode())
            assert 2 * d.trainable_bytes <= d.trained_bytes < 2 * d.trainable_bytes + 16
        shares = s.scalars(select(CycleDocument).order_by(CycleDocument.document_id)).all()
        assert [(c.document_id, c.new_bytes) for c in shares] == \
            [(d.id, d.trained_bytes) for d in docs]
        assert cyc.bytes_new == sum(d.trained_bytes for d in docs) and cyc.bytes_replay == 0
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
    monkeypatch.setattr(continuous_trainer, "commit_cycle", boom)
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


def test_a_stop_commits_what_the_cycle_trained_as_a_shorter_cycle(env):
    store, data = env
    add_doc(store, "a", "lattice", reps=40)
    stop = threading.Event()
    tr = ContinuousTrainer(store, data, SETTINGS, stop=stop,
                           progress=lambda c, i, n, loss: stop.set() if i == 3 else None)
    rep = tr.run_pending("tokens")
    assert rep.ended_by == "stop" and rep.run.steps == 3 and rep.checkpoint_path.exists()
    with store.session() as s:
        d = s.scalars(select(Document)).one()
        assert d.status == "learning" and 0 < d.trained_bytes < d.trainable_bytes
        c = s.scalars(select(Cycle)).one()
        assert c.status == "completed" and c.steps == 3 and c.bytes_new == d.trained_bytes
        assert s.scalars(select(EvalResult)).all() == []      # a stop does not wait for it


def test_a_stop_before_the_first_step_changes_nothing(env):
    store, data = env
    add_doc(store, "a", "lattice")
    stop = threading.Event()
    stop.set()
    tr = ContinuousTrainer(store, data, SETTINGS, stop=stop)
    with pytest.raises(CycleInterrupted):
        tr.run_pending("tokens")
    with store.session() as s:
        assert s.scalars(select(Document.status)).all() == ["pending"]
        assert s.scalars(select(Cycle.status)).all() == ["interrupted"]
    assert not list((data / "checkpoints").glob("ckpt-*.safetensors"))


def ledger(store):
    """{document id: (status, trained bytes, trainable bytes, sum of its cycle shares)}."""
    with store.session() as s:
        shares = dict(s.execute(select(CycleDocument.document_id,
                                       func.sum(CycleDocument.new_bytes))
                                .group_by(CycleDocument.document_id)).all())
        return {d.id: (d.status, d.trained_bytes, d.trainable_bytes, shares.get(d.id, 0))
                for d in s.scalars(select(Document).order_by(Document.id))}


def test_a_backlog_larger_than_one_cycle_is_learned_over_cycles_to_its_budget(env):
    store, data = env
    ids = [add_doc(store, f"d{i}", src, reps=12)
           for i, src in enumerate(["lattice", "spheres", "clock"] * 2)]
    tr = ContinuousTrainer(store, data, SETTINGS.replace(max_steps=8, passes=1.5))
    reports = []
    while tr.due()[0] is not None:
        reports.append(tr.run_pending(tr.due()[0]))
        assert len(reports) < 60
    assert len(reports) > 3 and all(r.ended_by == "steps" for r in reports[:-1])
    assert reports[-1].ended_by in ("steps", "backlog")
    assert [r.cycle_id for r in reports] == list(range(1, len(reports) + 1))
    led = ledger(store)
    for i in ids:
        status, trained, trainable, shares = led[i]
        assert status == "trained" and trained == shares      # nothing counted twice
        assert 1.5 * trainable <= trained < 1.5 * trainable + 16
    # the first cycles left documents part-way: they were learning, continued later
    with store.session() as s:
        assert s.scalar(select(func.count(func.distinct(CycleDocument.cycle_id)))) == len(reports)
        assert max(s.execute(select(func.count(CycleDocument.cycle_id))
                             .group_by(CycleDocument.document_id)).scalars()) > 1


def test_an_agent_restarted_with_other_passes_moves_the_documents_to_its_budget(store_target):
    """The agent starts its trainer by applying --passes to the store (store/ledger.py,
    apply_budget): with more passes a trained document learns again, with fewer a learning
    one that already has them is trained. Training is paused, so no cycle runs."""
    data, url = store_target.data_dir, store_target.url
    with store_target.open() as store:
        one, more = add_doc(store, "one", "lattice"), add_doc(store, "more", "spheres")
        with store.session() as s:      # as cycles under --passes 1 and 3 left them
            controls.set_paused(s, True, by="test")
            for doc_id, status, trained in ((one, "trained", 900), (more, "learning", 1900)):
                d = s.get(Document, doc_id)
                d.status, d.trainable_bytes, d.trained_bytes = status, 900, trained
    for passes, want in ((2.0, ["learning", "trained"]), (1.0, ["trained", "trained"])):
        agent = Agent(AgentConfig(data, SETTINGS.replace(passes=passes), role="train",
                                  database_url=url))
        t = threading.Thread(target=agent.run)
        t.start()
        try:
            assert agent.paused.wait(60), "the agent did not start"
            with store_target.open() as store:
                assert [ledger(store)[i][0] for i in (one, more)] == want
        finally:
            agent.stop.set()
            t.join(60)
        assert not t.is_alive() and not agent.errors


def test_a_document_arriving_during_a_backlog_is_learned_first(env):
    store, data = env
    for i in range(4):
        add_doc(store, f"d{i}", "lattice", reps=20)
    tr = ContinuousTrainer(store, data, SETTINGS.replace(max_steps=200))
    drop = []

    def on_step(c, i, n, loss):
        if i == 4 and not drop:          # a file dropped while the backlog cycle trains
            drop.append(add_doc(store, "new", "clock", reps=5))
            tr.arrivals.set()
    tr.progress = on_step
    first = tr.run_pending("tokens")
    assert first.ended_by == "preempted" and first.run.steps == 4
    tr.progress = None
    nxt = tr.run_pending(tr.due()[0])
    assert nxt.doc_ids == drop and nxt.ended_by == "backlog"   # the new text alone, to its budget
    assert ledger(store)[drop[0]][0] == "trained"
    assert all(ledger(store)[i][0] != "trained" for i in first.doc_ids)
    after = tr.run_pending(tr.due()[0])                          # then the backlog goes on
    assert set(after.doc_ids) <= set(first.doc_ids) and drop[0] in after.replay_ids


def new_version(store, uri, text):
    """A new version of a file, recorded the way the agent's ingest records it."""
    from agent.inputs.ingest import Ingestor

    return Ingestor(store).ingest_text(uri, text, source="lattice").document_id


def test_a_version_superseded_while_its_cycle_trains_ends_superseded_after_training(env):
    """Issue 14 item 2: a file rewritten while its cycle trains. The old version was
    trained: its row must say so (deleted, superseded after training, with the cycle), not
    "superseded before training"; only the live version is learned and replayed after."""
    store, data = env
    old = add_doc(store, "f", "lattice", reps=12)
    uri = "file:///w/lattice/f.txt"
    tr = ContinuousTrainer(store, data, SETTINGS)
    newer = []

    def on_step(c, i, n, loss):
        if i == 2 and not newer:         # the file changes under the running cycle
            newer.append(new_version(store, uri, "f, rewritten: " + TEXTS["spheres"] * 12))
    tr.progress = on_step
    first = tr.run_pending("tokens")
    tr.progress = None
    assert first.doc_ids == [old] and newer
    with store.session() as s:
        row = s.get(Document, old)
        assert (row.status, row.reason, row.cycle_id) == (
            "deleted", f"superseded by document {newer[0]} after training", first.cycle_id)
        assert row.trained_bytes > 0 and s.get(Document, newer[0]).status == "pending"
    second = tr.run_pending(tr.due()[0])
    assert second.doc_ids == newer and old not in second.replay_ids
    add_doc(store, "c", "clock")
    third = tr.run_pending(tr.due()[0])
    assert third.replay_ids == newer                 # the live version only
    assert ledger(store)[old][0] == "deleted"


def test_a_partly_learned_version_is_not_learned_on_or_replayed_once_superseded(env):
    """Issue 14 item 2: a version left learning by a bounded cycle, then replaced: the
    backlog continues with the new version only, and replay never reads the old one."""
    store, data = env
    old = add_doc(store, "f", "lattice", reps=30)
    uri = "file:///w/lattice/f.txt"
    tr = ContinuousTrainer(store, data, SETTINGS.replace(max_steps=2))
    first = tr.run_pending("tokens")
    assert first.doc_ids == [old] and ledger(store)[old][0] == "learning"
    new = new_version(store, uri, "f, rewritten: " + TEXTS["spheres"] * 8)
    add_doc(store, "c", "clock", reps=8)
    reports = []
    while tr.due()[0] is not None:
        reports.append(tr.run_pending(tr.due()[0]))
        assert len(reports) < 40
    assert reports and all(old not in r.doc_ids and old not in r.replay_ids for r in reports)
    assert any(new in r.doc_ids for r in reports)
    led = ledger(store)
    assert led[old][0] == "deleted" and led[new][0] == "trained"
    with store.session() as s:
        assert s.get(Document, old).reason == f"superseded by document {new} after training"


def test_retention_keeps_the_latest_k_and_one_per_hour_and_the_fallback_still_loads(env):
    store, data = env
    tr = ContinuousTrainer(store, data, SETTINGS.replace(keep_checkpoints=2))
    reps = []
    for i in range(5):
        add_doc(store, f"d{i}", "spheres", reps=3 + i)
        reps.append(tr.run_pending("tokens"))
    with store.session() as s:
        rows = {c.cycle_id: c for c in s.scalars(select(Checkpoint))}
    # the first (hour 0's) and the latest two are kept; the others are pruned, in the store too
    assert [c for c, r in sorted(rows.items()) if r.pruned is None] == [1, 4, 5]
    for r in reps:
        kept = rows[r.cycle_id].pruned is None
        assert r.checkpoint_path.exists() == kept
        assert r.checkpoint_path.with_name(
            r.checkpoint_path.name.replace(".safetensors", ".tokenizer.json")).exists() == kept
    raw = bytearray(reps[-1].checkpoint_path.read_bytes())
    raw[-10] ^= 0xFF
    reps[-1].checkpoint_path.write_bytes(bytes(raw))
    state = ContinuousTrainer(store, data, SETTINGS).load_latest()
    assert state.path == reps[3].checkpoint_path


def test_retention_keeps_one_checkpoint_per_hour_of_history(env):
    import datetime as dt
    from store.ledger import checkpoints_to_prune
    from store.checkpoints import record_checkpoint

    store, data = env
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    minutes = [0, 20, 50, 65, 70, 130, 131, 132, 133]
    with store.session() as s:
        for i, m in enumerate(minutes):
            c = record_checkpoint(s, path=f"/x/{i}", sha256="0" * 64, step=i, vocab_size=1)
            c.created = t0 + dt.timedelta(minutes=m)
        s.flush()
        gone = sorted(int(c.path.rsplit("/", 1)[1]) for c in checkpoints_to_prune(s, 3))
    # kept: the first of hour 0 (0), of hour 1 (65), of hour 2 (130) and the latest three
    assert gone == [1, 2, 4]


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
        assert s.scalars(select(Cycle)).all() == []       # no cycle for nothing to train
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




def test_a_tokenizer_write_killed_midway_leaves_nothing_after_the_next_start(env, monkeypatch):
    """Issue 14 item 1: the tokenizer is written by the one atomic-write helper, so the temp
    file a SIGKILL leaves mid-write carries the name recovery removes."""
    import os
    import shutil

    store, data = env
    add_doc(store, "a", "lattice")
    tr = ContinuousTrainer(store, data, SETTINGS)
    tr.run_pending("tokens")
    left = []
    real_replace = os.replace

    def killed_before_rename(src, dst):
        if str(dst).endswith(".tokenizer.json"):      # what a SIGKILL leaves: the temp file
            shutil.copyfile(src, str(src) + ".kept")
            left.append(Path(src))
            raise KeyboardInterrupt                   # the write never finishes
        return real_replace(src, dst)

    add_doc(store, "b", "spheres")
    monkeypatch.setattr(os, "replace", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        ContinuousTrainer(store, data, SETTINGS).run_pending("tokens")
    monkeypatch.setattr(os, "replace", real_replace)
    [tmp] = left
    os.rename(str(tmp) + ".kept", tmp)
    assert tmp.parent == data / "checkpoints" and tmp.name.endswith(".tmp")
    removed = ContinuousTrainer(store, data, SETTINGS).recover()
    assert tmp in removed and not tmp.exists()
    assert not [p for p in (data / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_the_last_step_metrics_are_recorded_once(env, caplog):
    """A cycle whose last step was already sampled does not record it twice (it logged a
    UNIQUE-constraint warning and lost nothing, but said something was wrong)."""
    from dataclasses import replace

    from store.models import StepMetric

    store, data = env
    add_doc(store, "a", "lattice")
    with caplog.at_level(logging.WARNING):
        rep = ContinuousTrainer(store, data, replace(SETTINGS, max_steps=1)).run_pending("tokens")
    assert rep is not None and rep.run.steps == 1
    assert not [r for r in caplog.records if "step metrics" in r.getMessage()]
    with store.session() as s:
        assert list(s.scalars(select(StepMetric.step).where(
            StepMetric.cycle_id == rep.cycle_id))) == [1]


# --- vocabulary first: a new model learns its vocabulary from its whole backlog ---------------

def word(j):
    """A word of letters of its own for document j."""
    return "zq" + "".join(chr(97 + (j * 7 + 3 * m) % 26) for m in range(5))


def vocab_rows(store):
    with store.session() as s:
        return {v.token_id: (v.cycle_id, v.document_id, v.token_bytes)
                for v in s.scalars(select(VocabEntry))}


def test_a_new_model_learns_its_vocabulary_from_the_whole_backlog_before_its_first_step(env):
    """The first cycle trains one step, a few of the documents; its vocabulary comes from all
    of them (the words of documents it never read are tokens, recorded with cycle 1 and the
    document they come from), and the model in its checkpoint has a row per token."""
    from agent.training.model_state import load_model_state

    store, data = env
    ids = [add_text(store, f"n{j}", f"note {j}: " + f" {word(j)}" * 40 + TEXTS["clock"] * 3)
           for j in range(12)]
    tr = ContinuousTrainer(store, data, SETTINGS.replace(preset="small", max_steps=1))
    rep = tr.run_pending("tokens")
    assert rep.run.steps == 1 and rep.vocab_before == 257 and rep.vocab_after > 257 + 20
    assert sorted(d.id for d in rep.run.vocab_docs) == ids
    state = load_model_state(rep.checkpoint_path)
    tok = state.tokenizer
    assert len(tok) == rep.vocab_after == state.model.config.vocab_size
    unread = [i for i, (status, trained, _, _) in ledger(store).items() if trained == 0]
    assert unread, "the first cycle read every document: the test needs more of them"
    rows = vocab_rows(store)
    assert {t for t, (c, _, _) in rows.items() if c == rep.cycle_id} == \
        set(rep.run.new_token_ids) == set(range(FIRST_LEARNED, len(tok)))
    assert all(rows[t] == (None, None, b"") for t in range(257, FIRST_LEARNED))  # specials
    for i in unread:
        (t,) = tok.encode(f" {word(ids.index(i))}")               # one token ...
        assert rows[t] == (rep.cycle_id, i, f" {word(ids.index(i))}".encode())   # ... from it


def test_cllm_train_on_a_new_data_directory_learns_its_vocabulary_first(env):
    from agent.continuous_trainer import record_documents
    from agent.training.learn import Doc

    store, data = env
    docs = [Doc(f"file:///w/{s}.txt", s, f"{s}: " + TEXTS[s] * 10) for s in TEXTS]
    tr = ContinuousTrainer(store, data, SETTINGS)
    rep = tr.run_cycle(record_documents(store, docs), "train", steps=2)
    assert rep.vocab_before == 257 and rep.vocab_after == 320      # the tiny preset's size
    assert len(rep.run.vocab_docs) == 3 and len(rep.run.new_token_ids) == 320 - FIRST_LEARNED
    assert tr.state.model.config.vocab_size == 320


def test_a_resumed_model_keeps_its_vocabulary_and_grows_per_cycle(env, monkeypatch):
    """A data directory with a checkpoint (as every older one has) resumes as it always
    did: no vocabulary relearned, a later cycle's tokens come from its new documents."""
    import agent.training.plan as plan
    from agent.training.model_state import load_model_state

    store, data = env
    add_doc(store, "a", "lattice")
    add_doc(store, "b", "spheres")
    settings = SETTINGS.replace(preset="small")
    first = ContinuousTrainer(store, data, settings).run_pending("tokens")
    saved = load_model_state(first.checkpoint_path)

    def no_sample(*a, **k):
        raise AssertionError("a trained model's vocabulary is never learned again")
    monkeypatch.setattr(plan, "vocabulary_sample", no_sample)
    tr = ContinuousTrainer(store, data, settings)
    state = tr.load_latest()
    assert state.tokenizer.sha256 == saved.tokenizer.sha256
    assert state.model.params.tobytes() == saved.model.params.tobytes()
    new = add_text(store, "c", "quartz xylophones: " + " quartzxylophone" * 30)
    rep = tr.run_pending("tokens")
    assert rep.doc_ids == [new] and rep.run.vocab_docs == []
    assert rep.vocab_before == first.vocab_after < rep.vocab_after
    assert tr.state.tokenizer.merges[:len(saved.tokenizer.merges)] == saved.tokenizer.merges
    rows = vocab_rows(store)
    assert rep.run.new_token_ids and all(rows[t][:2] == (rep.cycle_id, new)
                                         for t in rep.run.new_token_ids)


def test_a_first_cycle_that_trains_nothing_leaves_the_vocabulary_to_the_next(env):
    """A first cycle paused before its first step records nothing; the next one learns the
    vocabulary again and records every token with its own cycle."""
    store, data = env
    add_doc(store, "a", "lattice")
    tr = ContinuousTrainer(store, data, SETTINGS)
    tr.paused.set()
    assert tr.run_pending("tokens") is None
    tr.paused.clear()
    rep = tr.run_pending("tokens")
    assert rep.vocab_before == 257 and rep.vocab_after > 257
    rows = vocab_rows(store)
    assert {t for t, (c, _, _) in rows.items() if c is None} == set(range(FIRST_LEARNED))
    assert {t for t, (c, _, _) in rows.items() if c == rep.cycle_id} == \
        set(range(FIRST_LEARNED, rep.vocab_after))


# --- a full disk at the checkpoint (issue 26 #9) ------------------------------------------


@pytest.mark.parametrize("code,hint", [(errno.ENOSPC, "free disk space in"),
                                       (errno.EDQUOT, "free disk space in"),
                                       (errno.EIO, "check the disk holding")])
def test_a_checkpoint_that_cannot_be_written_is_a_cllm_error_and_leaves_no_file(
        env, monkeypatch, code, hint):
    from agent.training.model_state import (CheckpointWriteError, new_model_state,
                                            save_model_state)

    store, data = env

    def fails(path, blob):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr("engine.checkpoint.atomic_write_bytes", fails)
    with pytest.raises(CheckpointWriteError) as e:      # after its tokenizer file was written
        save_model_state(new_model_state("tiny"), data, 1)
    assert isinstance(e.value, CllmError) and os.strerror(code) in str(e.value)
    assert e.value.hint == f"{hint} {(data / 'checkpoints').resolve()}"
    assert list((data / "checkpoints").iterdir()) == []


def full_disk_once(monkeypatch):
    """The checkpoint's atomic write fails once with ENOSPC, as on a full disk; the calls."""
    from engine import checkpoint

    real, calls = checkpoint.atomic_write_bytes, []

    def write(path, blob):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, blob)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", write)
    return calls


def test_a_full_disk_at_the_checkpoint_backs_off_and_the_next_try_commits(env, monkeypatch,
                                                                          caplog):
    store, data = env
    add_doc(store, "a", "lattice")
    add_doc(store, "b", "spheres")
    calls = full_disk_once(monkeypatch)
    monkeypatch.setattr(trainer_loop, "LOOP_RETRY_S", 0.05)
    stop, crawled = threading.Event(), threading.Event()
    crawled.set()
    settings = SETTINGS.replace(snapshot_seconds=0)     # the one write is the checkpoint's
    loop = trainer_loop.TrainerLoop(ContinuousTrainer(store, data, settings), stop=stop,
                                          wake=threading.Event(), crawled=crawled, max_cycles=1)
    with caplog.at_level(logging.INFO, logger="agent"):
        t = threading.Thread(target=loop.run)
        t.start()
        t.join(120)
    assert not t.is_alive() and loop.cycles_completed == 1 and len(calls) == 2
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cycle failed")]
    assert len(failed) == 1 and "\n" not in failed[0], failed            # one line, with its hint
    assert "No space left on device" in failed[0] and "retrying in" in failed[0]
    assert f"free disk space in {(data / 'checkpoints').resolve()}" in failed[0]
    with store.session() as s:
        cycles = s.scalars(select(Cycle).order_by(Cycle.id)).all()
        assert [c.status for c in cycles] == ["failed", "completed"]
        assert "No space left on device" in cycles[0].error
        credited = {c.cycle_id for c in s.scalars(select(CycleDocument))}
        assert credited == {cycles[1].id}            # nothing counted for the failed cycle
        ck = s.scalars(select(Checkpoint)).one()
        assert ck.cycle_id == cycles[1].id and file_sha256(ck.path) == ck.sha256
    for status, trained, trainable, shares in ledger(store).values():
        # each document counted once: its passes of the completed cycle, not two cycles' worth
        assert status == "trained" and trained == shares
        assert 2 * trainable <= trained < 2 * trainable + 16
    assert sorted(p.name for p in (data / "checkpoints").glob("ckpt-*")) == [
        f"ckpt-{cycles[1].id:06d}.safetensors", f"ckpt-{cycles[1].id:06d}.tokenizer.json"]


def test_a_stop_ends_the_back_off_of_a_disk_that_stays_full(env, monkeypatch):
    store, data = env
    add_doc(store, "a", "lattice")

    def full(path, blob):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("engine.checkpoint.atomic_write_bytes", full)
    monkeypatch.setattr(trainer_loop, "LOOP_RETRY_S", 600.0)    # capped at 300 s
    backing_off = threading.Event()

    class Heard(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("cycle failed") and "300 s" in record.getMessage():
                backing_off.set()
    heard = Heard()
    trainer_loop.loop_log.addHandler(heard)
    stop, crawled = threading.Event(), threading.Event()
    crawled.set()
    loop = trainer_loop.TrainerLoop(
        ContinuousTrainer(store, data, SETTINGS.replace(snapshot_seconds=0)), stop=stop,
        wake=threading.Event(), crawled=crawled)
    t = threading.Thread(target=loop.run)
    t.start()
    try:
        assert backing_off.wait(120), "the failure was not logged with its back-off"
        stop.set()                       # ends the 300 s wait at once
        t.join(30)
        assert not t.is_alive(), "the back-off did not end at the stop"
    finally:
        trainer_loop.loop_log.removeHandler(heard)
        stop.set()
        t.join()
    assert loop.cycles_completed == 0
    with store.session() as s:
        assert s.scalars(select(Document.status)).all() == ["pending"]
        assert s.scalar(select(func.count()).select_from(CycleDocument)) == 0
