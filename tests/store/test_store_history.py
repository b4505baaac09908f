"""Documents, URLs, targets and training history through the store's functions, on SQLite and
PostgreSQL: dedupe by content, refusals, deletions, the training queue, cycles, vocabulary
growth, checkpoints and forgetting."""
from __future__ import annotations

import datetime as dt
import hashlib

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import IntegrityError

from store import checkpoints, cycles, documents, vocab
from store.documents import (add_document, add_documents, content_sha256, mark_deleted, mark_failed,
                             mark_trained, pending_documents, pending_summary, record_refused,
                             replay_sample)
from store.models import Checkpoint, CrawlTarget, Document
from store.targets import add_target, list_targets, remove_target
from store.frontier import get_url, record_url

UTC = dt.timezone.utc


def count(s, model=Document) -> int:
    return s.scalar(sa.select(sa.func.count()).select_from(model))


# --------------------------------------------------------------------------- documents

def test_the_same_content_twice_is_a_no_op_returning_the_existing_document(store):
    text = "def f():\n    return 'héllo wörld ✓ 你好'\n"
    with store.session() as s:
        doc, created = add_document(s, uri="file:///a.py", source="src", text=text, n_tokens=9)
        assert created
        first_id = doc.id
    with store.session() as s:
        again, created = add_document(s, uri="file:///copy/a.py", source="other", text=text)
        assert not created and again.id == first_id
        assert again.uri == "file:///a.py" and again.source == "src"  # the first sighting
        assert count(s) == 1
    with store.session(read_only=True) as s:
        doc = s.get(Document, first_id)
        assert doc.text == text  # the text is kept, exactly, for replay
        assert doc.sha256 == hashlib.sha256(text.encode()).hexdigest() == content_sha256(text)
        assert doc.size_bytes == len(text.encode()) and doc.n_tokens == 9
        assert doc.status == "pending" and doc.encoding == "utf-8"
        assert doc.first_seen.tzinfo is not None and doc.first_seen.utcoffset() == dt.timedelta(0)
        assert abs(doc.first_seen - dt.datetime.now(UTC)) < dt.timedelta(minutes=5)


def test_same_content_within_one_transaction_is_one_row(store):
    with store.session() as s:
        a, ca = add_document(s, uri="a", source="s", text="twice")
        b, cb = add_document(s, uri="b", source="s", text="twice")
        assert (ca, cb) == (True, False) and a is b
    with store.session(read_only=True) as s:
        assert count(s) == 1


def test_bulk_add_gives_the_same_answers_in_order(store):
    with store.session() as s:
        old, _ = add_document(s, uri="old", source="s", text="already here")
        gone, _ = add_document(s, uri="gone", source="s", text="deleted, then back")
        mark_deleted(s, "gone")
        got = add_documents(s, [dict(uri="n1", source="s", text="new one", n_tokens=3),
                                dict(uri="o2", source="s", text="already here"),
                                dict(uri="n1-copy", source="t", text="new one"),
                                dict(uri="back", source="s", text="deleted, then back")])
        assert [created for _, created in got] == [True, False, False, False]
        assert got[1][0].id == old.id and got[0][0] is got[2][0]
        assert (got[3][0].id, got[3][0].status, got[3][0].uri) == (gone.id, "pending", "back")
        with pytest.raises(ValueError):
            add_documents(s, [dict(uri="z", source="s", text="nul \x00")])
    with store.session(read_only=True) as s:
        assert count(s) == 3
        new = s.get(Document, got[0][0].id)
        assert (new.uri, new.text, new.n_tokens) == ("n1", "new one", 3)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                    max_size=300))
def test_any_text_round_trips_and_dedupes(store, text):
    with store.session() as s:
        known = s.scalar(sa.select(Document.id).where(Document.sha256 == content_sha256(text)))
        doc, created = add_document(s, uri="h", source="s", text=text)
        assert created == (known is None)
        doc_id = doc.id
    with store.session(read_only=True) as s:
        assert s.get(Document, doc_id).text == text
        again, created = add_document(s, uri="h2", source="s", text=text)
        assert (again.id, created) == (doc_id, False)


def test_text_postgresql_cannot_store_is_refused_the_same_everywhere(store):
    with store.session() as s:
        with pytest.raises(ValueError, match="NUL"):
            add_document(s, uri="n", source="s", text="a\x00b")
        with pytest.raises(ValueError, match="UTF-8"):
            add_document(s, uri="n", source="s", text="bad \udcff surrogate")
        assert count(s) == 0


def test_refused_inputs_are_recorded_with_their_reason_once_per_uri(store):
    with store.session() as s:
        r1 = record_refused(s, uri="file:///bin", source="s", reason="binary", size_bytes=10)
        r2 = record_refused(s, uri="file:///bin", source="s", reason="binary (again)")
        assert r1.id == r2.id and r2.reason == "binary (again)"
        failed = record_refused(s, uri="file:///bin", source="s", reason="io", status="failed")
        assert failed.id != r1.id
        with pytest.raises(ValueError):
            record_refused(s, uri="x", source="s", reason="r", status="trained")
    with store.session(read_only=True) as s:
        rows = documents.list_documents(s, status="skipped")
        assert [(d.uri, d.sha256, d.reason) for d in rows] == \
            [("file:///bin", None, "binary (again)")]
        assert rows[0].text is None


def test_deleted_documents_leave_the_queue_and_come_back_with_their_content(store):
    with store.session() as s:
        keep, _ = add_document(s, uri="keep", source="s", text="keep me")
        gone, _ = add_document(s, uri="old/place", source="s", text="moved content")
        assert mark_deleted(s, "old/place") == 1
        assert mark_deleted(s, "old/place") == 0  # already deleted
        assert mark_deleted(s, "never/seen") == 0
        assert [d.id for d in pending_documents(s)] == [keep.id]
        back, created = add_document(s, uri="new/place", source="s", text="moved content")
        assert not created and back.id == gone.id
        assert (back.status, back.uri) == ("pending", "new/place")


def test_the_training_queue_pending_trained_replay(store):
    with store.session() as s:
        docs = [add_document(s, uri=f"d{i}", source="ab"[i % 2], text=f"text {i}",
                             n_tokens=10 + i)[0] for i in range(6)]
        summary = pending_summary(s)
        assert summary["documents"] == 6 and summary["tokens"] == sum(range(10, 16))
        assert summary["oldest"] == min(d.first_seen for d in docs)
        assert summary["oldest"].tzinfo is not None
        cycle = cycles.start_cycle(s, trigger="tokens", workers=2)
    with store.session() as s:
        pending = pending_documents(s, limit=4)
        assert [d.uri for d in pending] == ["d0", "d1", "d2", "d3"]
        ids = [d.id for d in pending]
    with store.session() as s:  # in a later session: the text was loaded with the rows
        assert [d.text for d in pending] == [f"text {i}" for i in range(4)]
        assert mark_trained(s, ids, cycle.id) == 4
        assert mark_trained(s, ids, cycle.id) == 0  # a replayed document keeps its cycle
        assert mark_failed(s, [docs[5].id], "cannot tokenise") == 1
    with store.session(read_only=True) as s:
        assert [d.uri for d in documents.list_documents(s, cycle_id=cycle.id)] == \
            ["d0", "d1", "d2", "d3"]
        assert [d.uri for d in documents.list_documents(s, status="trained", source="a")] == \
            ["d0", "d2"]
        assert [d.uri for d in documents.list_documents(s, status="pending")] == ["d4"]
        assert [d.reason for d in documents.list_documents(s, status="failed")] == \
            ["cannot tokenise"]
        assert len(documents.list_documents(s, limit=2)) == 2
        counts = {(c["source"], c["status"]): c["documents"] for c in documents.document_counts(s)}
        assert counts == {("a", "trained"): 2, ("a", "pending"): 1, ("b", "trained"): 2,
                          ("b", "failed"): 1}
        sample = replay_sample(s, 3, seed=7)
        assert len(sample) == 3 and {d.status for d in sample} == {"trained"}
        assert [d.id for d in replay_sample(s, 3, seed=7)] == [d.id for d in sample]
        assert all(d.text.startswith("text ") for d in sample)
        assert {d.uri for d in replay_sample(s, 10, exclude_ids=ids[:2])} == {"d2", "d3"}
    with store.session() as s:
        mark_deleted(s, "d3")
        assert "d3" not in {d.uri for d in replay_sample(s, 10)}
        # deleted but trained: the row keeps its cycle, and comes back as trained
        back, _ = add_document(s, uri="d3-again", source="b", text="text 3")
        assert back.status == "trained" and back.cycle_id == cycle.id


# ------------------------------------------------------------------------------ cycles

def test_cycles_record_and_list(store):
    with store.session() as s:
        c1 = cycles.start_cycle(s, trigger="tokens", workers=2, schedule={"lr": 3e-4},
                                 vocab_size_before=256)
        assert c1.status == "running" and c1.id is not None
        cycles.record_step_metrics(s, c1.id, [{"step": 1, "loss": 5.0, "lr": 1e-4},
                                               {"step": 2, "loss": 4.5, "grad_norm": 0.9}])
        cycles.finish_cycle(s, c1.id, docs_new=3, tokens=1200, steps=2, loss_start=5.0,
                             loss_end=4.5, tokens_per_s=900.0, vocab_size_after=300)
        c2 = cycles.start_cycle(s, trigger="age")
        c3 = cycles.start_cycle(s, trigger="manual")
        cycles.finish_cycle(s, c2.id, status="failed", error="NaN loss")
        with pytest.raises(TypeError):
            cycles.finish_cycle(s, c3.id, bogus=1)
        with pytest.raises(LookupError):
            cycles.finish_cycle(s, 999)
    with store.session() as s:
        assert cycles.interrupt_running_cycles(s) == 1
    with store.session(read_only=True) as s:
        rows = cycles.list_cycles(s)
        assert [(c.id, c.status) for c in rows] == [(c1.id, "completed"), (c2.id, "failed"),
                                                      (c3.id, "interrupted")]
        done = rows[0]
        assert (done.docs_new, done.tokens, done.schedule) == (3, 1200, {"lr": 3e-4})
        assert done.finished >= done.started and done.finished.tzinfo is not None
        assert [c.id for c in cycles.list_cycles(s, limit=2)] == [c2.id, c3.id]
        assert [c.id for c in cycles.list_cycles(s, status="failed")] == [c2.id]
        assert rows[1].error == "NaN loss"
        assert [(m.step, m.loss) for m in cycles.step_metrics(s, c1.id)] == [(1, 5.0), (2, 4.5)]


def test_forgetting_per_source(store):
    with store.session() as s:
        a, _ = add_document(s, uri="a", source="alpha", text="alpha text")
        b, _ = add_document(s, uri="b", source="beta", text="beta text")
        c1 = cycles.start_cycle(s, trigger="tokens")
        mark_trained(s, [a.id], c1.id)
        cycles.record_eval(s, c1.id, "alpha", 2.0, n_tokens=100)
        cycles.finish_cycle(s, c1.id)
        c2 = cycles.start_cycle(s, trigger="tokens")
        mark_trained(s, [b.id], c2.id)
        cycles.record_eval(s, c2.id, "alpha", 2.5, n_tokens=100)  # learned in c1: forgot 0.5
        cycles.record_eval(s, c2.id, "beta", 3.0, n_tokens=300)   # learned now: 0
        cycles.record_eval(s, c2.id, "gamma", 4.0)                # never learned: unknown
        done = cycles.finish_cycle(s, c2.id)
    assert done.forgetting_mean == pytest.approx(0.25) and done.forgetting_max == pytest.approx(0.5)
    assert done.val_loss == pytest.approx((2.5 + 3.0 + 4.0) / 3)  # gamma's tokens unknown
    with store.session(read_only=True) as s:
        rows = cycles.forgetting_by_source(s)
        assert [(r["source"], r["cycle_id"], r["forgetting"]) for r in rows] == [
            ("alpha", c1.id, 0.0), ("alpha", c2.id, pytest.approx(0.5)),
            ("beta", c2.id, 0.0), ("gamma", c2.id, None)]
        assert [r["source"] for r in cycles.forgetting_by_source(s, cycle_id=c1.id)] == ["alpha"]
        assert [r["baseline_loss"] for r in cycles.forgetting_by_source(s, source="alpha")] == \
            [2.0, 2.0]


# -------------------------------------------------------------------------- vocabulary

def test_vocabulary_grows_append_only_with_deltas_per_cycle(store):
    with store.session() as s:
        vocab.record_vocab(s, [{"token_id": i, "token_bytes": bytes([i])} for i in range(256)])
        doc, _ = add_document(s, uri="d", source="s", text="the the the")
        c1 = cycles.start_cycle(s, trigger="tokens")
        vocab.record_vocab(s, [{"token_id": 256, "token_bytes": b"th", "left_id": 116,
                                  "right_id": 104, "document_id": doc.id},
                                 {"token_id": 257, "token_bytes": b"the", "left_id": 256,
                                  "right_id": 101, "document_id": doc.id}], cycle_id=c1.id)
        c2 = cycles.start_cycle(s, trigger="tokens")  # learned nothing new
        c3 = cycles.start_cycle(s, trigger="tokens")
        vocab.record_vocab(s, [{"token_id": 258, "token_bytes": b" the"}], cycle_id=c3.id)
        with pytest.raises(ValueError, match="append-only"):
            vocab.record_vocab(s, [{"token_id": 100, "token_bytes": b"x"}], cycle_id=c3.id)
    with store.session(read_only=True) as s:
        assert vocab.vocab_size(s) == 259
        assert vocab.vocab_growth(s) == [
            {"cycle_id": None, "added": 256, "vocab_size": 256},
            {"cycle_id": c1.id, "added": 2, "vocab_size": 258},
            {"cycle_id": c2.id, "added": 0, "vocab_size": 258},
            {"cycle_id": c3.id, "added": 1, "vocab_size": 259}]
        delta = vocab.vocab_delta(s, c1.id)
        assert [(v.token_id, v.token_bytes, v.document_id) for v in delta] == [
            (256, b"th", doc.id), (257, b"the", doc.id)]
        assert [v.token_bytes for v in vocab.load_vocab(s)][-3:] == [b"th", b"the", b" the"]


# ------------------------------------------------------------------------- checkpoints

def test_checkpoints_one_latest_and_fallback(store):
    with store.session() as s:
        c1 = cycles.start_cycle(s, trigger="tokens")
        k1 = checkpoints.record_checkpoint(s, path="ck/1.safetensors", sha256="a" * 64, step=10,
                                       vocab_size=300, cycle_id=c1.id, size_bytes=1234)
        k2 = checkpoints.record_checkpoint(s, path="ck/2.safetensors", sha256="b" * 64, step=20,
                                       vocab_size=310, cycle_id=c1.id)
        assert checkpoints.latest_checkpoint(s).id == k2.id
    with store.session() as s:  # k2 failed its hash: fall back to k1
        checkpoints.set_latest_checkpoint(s, k1.id)
    with store.session(read_only=True) as s:
        assert checkpoints.latest_checkpoint(s).id == k1.id
        assert [(k.id, k.is_latest) for k in checkpoints.list_checkpoints(s)] == [
            (k1.id, True), (k2.id, False)]
        assert [k.id for k in checkpoints.list_checkpoints(s, newest_first=True, limit=1)] == [k2.id]
        assert [k.step for k in checkpoints.list_checkpoints(s, cycle_id=c1.id)] == [10, 20]
    with pytest.raises(IntegrityError):  # the schema itself allows one latest only
        with store.session() as s:
            s.execute(sa.update(Checkpoint).values(is_latest=True))
    with store.session() as s:
        assert checkpoints.latest_checkpoint(s).id == k1.id
        with pytest.raises(LookupError):
            checkpoints.set_latest_checkpoint(s, 999)


# ------------------------------------------------------------------- URLs and targets

def test_fetched_urls_are_remembered_and_updated(store):
    long_url = "https://example.org/" + "p" * 5000  # longer than a btree entry may be
    with store.session() as s:
        assert get_url(s, long_url) is None
        doc, _ = add_document(s, uri=long_url, source="example.org", text="page")
        record_url(s, long_url, status="fetched", http_status=200, document_id=doc.id)
        record_url(s, "https://example.org/x", status="failed", http_status=503, reason="5xx")
    with store.session() as s:
        assert get_url(s, long_url) and get_url(s, "https://example.org/x")
        assert get_url(s, "https://example.org/y") is None
        row = record_url(s, "https://example.org/x", status="fetched", http_status=200)
        assert (row.status, row.http_status, row.reason) == ("fetched", 200, None)
        assert s.get(type(row), row.id).url == "https://example.org/x"
        assert get_url(s, long_url).url == long_url
        assert s.scalar(sa.select(sa.func.count()).select_from(type(row))) == 2


def test_crawl_targets_and_watched_roots(store):
    with store.session() as s:
        w, created = add_target(s, "watch", "/home/me/src", {"exclude": ["*.tmp"]})
        assert created and w.options == {"exclude": ["*.tmp"]}
        c, _ = add_target(s, "crawl", "https://docs.example.org", {"depth": 2})
        again, created = add_target(s, "watch", "/home/me/src")
        assert again.id == w.id and not created and again.options == {"exclude": ["*.tmp"]}
        with pytest.raises(ValueError):
            add_target(s, "ftp", "x")
        doc, _ = add_document(s, uri="file:///home/me/src/a.py", source="src", text="a = 1",
                              target_id=w.id)
    with store.session() as s:
        assert [t.kind for t in list_targets(s)] == ["watch", "crawl"]
        s.get(CrawlTarget, c.id).enabled = False      # a disabled row: listed on request
        s.flush()
        assert [t.id for t in list_targets(s)] == [w.id]
        assert [t.id for t in list_targets(s, "crawl", include_disabled=True)] == [c.id]
        assert remove_target(s, w.id) and not remove_target(s, w.id)
    with store.session(read_only=True) as s:
        assert s.get(Document, doc.id).target_id is None  # the document stays


# ------------------------------------------------- options the continuous trainer uses

def test_documents_by_id_with_their_text_in_id_order(store, monkeypatch):
    monkeypatch.setattr(documents, "_CHUNK", 2)  # several IN (...) chunks
    with store.session() as s:
        docs = [add_document(s, uri=f"d{i}", source="ab"[i % 2], text=f"text {i}")[0]
                for i in range(6)]
        ids = [d.id for d in docs]
    with store.session(read_only=True) as s:
        got = documents.list_documents(s, ids=[ids[4], ids[0], ids[2], ids[4], ids[5], 10**9],
                                     with_text=True)
        assert [d.uri for d in got] == ["d0", "d2", "d4", "d5"]
        assert [d.uri for d in documents.list_documents(s, ids=ids, source="b", limit=2)] == \
            ["d1", "d3"]
        assert documents.list_documents(s, ids=[]) == []
    assert [d.text for d in got] == ["text 0", "text 2", "text 4", "text 5"]  # loaded


def test_replay_sample_with_its_own_draw(store):
    with store.session() as s:
        docs = [add_document(s, uri=f"d{i}", source="s", text=f"text {i}")[0] for i in range(5)]
        c = cycles.start_cycle(s, trigger="tokens")
        mark_trained(s, [d.id for d in docs], c.id)
    seen = []

    def draw(ids, k):
        seen.append((list(ids), k))
        return [ids[-1], ids[0]]
    with store.session(read_only=True) as s:
        got = replay_sample(s, 2, exclude_ids=[docs[1].id], draw=draw)
        assert [d.uri for d in got] == ["d0", "d4"] and got[1].text == "text 4"
        assert seen == [([docs[i].id for i in (0, 2, 3, 4)], 2)]
        assert replay_sample(s, 0, draw=draw) == [] and len(seen) == 1


def test_mark_trained_retrain_records_the_cycle_on_every_listed_document(store):
    with store.session() as s:
        old, new, gone, bad = (add_document(s, uri=u, source="s", text=u)[0]
                               for u in ("old", "new", "gone", "bad"))
        c1 = cycles.start_cycle(s, trigger="tokens")
        mark_trained(s, [old.id, gone.id], c1.id)
        mark_deleted(s, "gone")
        mark_failed(s, [bad.id], "nope")
        c2 = cycles.start_cycle(s, trigger="train", docs_new=4)
        ids = [old.id, new.id, gone.id, bad.id]
        assert mark_trained(s, ids, c2.id, retrain=True,
                            n_tokens={old.id: 3, new.id: 4, gone.id: 5, bad.id: 6}) == 1
    with store.session(read_only=True) as s:
        assert cycles.get_cycle(s, c2.id).docs_new == 4
        assert [(d.uri, d.status, d.cycle_id, d.n_tokens)
                for d in documents.list_documents(s, ids=ids)] == [
            ("old", "trained", c2.id, 3), ("new", "trained", c2.id, 4),
            ("gone", "deleted", c2.id, 5), ("bad", "failed", c2.id, 6)]
    with store.session() as s:  # without retrain, an earlier cycle is kept (replay)
        c3 = cycles.start_cycle(s, trigger="tokens")
        assert mark_trained(s, [old.id], c3.id, n_tokens={old.id: 7}) == 0
    with store.session(read_only=True) as s:
        d = documents.list_documents(s, ids=[old.id])[0]
        assert (d.cycle_id, d.n_tokens) == (c2.id, 7)


def test_evaluations_with_a_given_baseline_and_forgetting_by_cycle(store):
    with store.session() as s:
        a, _ = add_document(s, uri="a", source="alpha", text="alpha text")
        c1 = cycles.start_cycle(s, trigger="tokens")
        mark_trained(s, [a.id], c1.id)
        cycles.record_eval(s, c1.id, "beta", 3.0)
        cycles.record_eval(s, c1.id, "alpha", 2.0)
        c2 = cycles.start_cycle(s, trigger="tokens")
        kept = cycles.record_eval(s, c2.id, "alpha", 2.5, derive_baseline=False)
        given = cycles.record_eval(s, c2.id, "beta", 3.5, baseline_loss=3.0,
                                    derive_baseline=False)
        assert (kept.baseline_loss, kept.forgetting) == (None, None)  # not derived: 2.0
        assert given.forgetting == pytest.approx(0.5)
    with store.session(read_only=True) as s:
        assert [(r["cycle_id"], r["source"]) for r in
                cycles.forgetting_by_source(s, by_cycle=True)] == [
            (c1.id, "alpha"), (c1.id, "beta"), (c2.id, "alpha"), (c2.id, "beta")]
        assert [r["cycle_id"] for r in
                cycles.forgetting_by_source(s, source="beta", by_cycle=True)] == [c1.id, c2.id]


def test_interrupting_running_cycles_can_keep_their_error(store):
    with store.session() as s:
        c1 = cycles.start_cycle(s, trigger="tokens")
        c2 = cycles.start_cycle(s, trigger="tokens")
        cycles.get_cycle(s, c1.id).error = "already explained"
    with store.session() as s:
        assert cycles.interrupt_running_cycles(s, "stopped", keep_error=True) == 2
    with store.session(read_only=True) as s:
        assert [(c.status, c.error) for c in cycles.list_cycles(s)] == [
            ("interrupted", "already explained"), ("interrupted", "stopped")]
        assert all(c.finished is not None for c in cycles.list_cycles(s))


def test_a_target_longer_than_its_column_is_refused_on_every_backend(store):
    """PostgreSQL enforces String(2048) (SQLite would not): refuse it the same way on both,
    with a clear error, and leave the session usable."""
    from store import StoreError

    with store.session() as s:
        with pytest.raises(StoreError, match="characters long"):
            add_target(s, "crawl", "https://example.org/" + "a" * 3000)
        ok, created = add_target(s, "crawl", "https://example.org/" + "a" * 2000)
        assert created and len(ok.location) == 2020
