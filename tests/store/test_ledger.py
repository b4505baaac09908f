"""The training ledger on SQLite and PostgreSQL: a cycle's credits move documents from
pending through learning to trained at their budget, rollback takes them back out, a changed
budget re-sorts statuses, the backlog comes new arrivals first, and the migration to the
ledger turns old trained rows into learning ones."""
from __future__ import annotations

import datetime as dt
import hashlib

from sqlalchemy import select

from store import cycles, ledger
from store.models import CycleDocument, Document


def shares(s, document_id):
    """(cycle, backlog bytes, replay bytes) of each cycle that trained the document."""
    return [(c.cycle_id, c.new_bytes, c.replay_bytes) for c in s.scalars(
        select(CycleDocument).where(CycleDocument.document_id == document_id)
        .order_by(CycleDocument.cycle_id))]


def add(s, name, size=1000, status="pending", first_seen=None):
    text = name * (size // len(name))
    d = Document(uri=f"file:///t/{name}", source="t", text=text, size_bytes=len(text),
                 sha256=hashlib.sha256(text.encode()).hexdigest(), status=status)
    if first_seen is not None:
        d.first_seen = first_seen
    s.add(d)
    s.flush()
    return d.id


def test_credits_move_documents_to_learning_then_trained_at_the_budget(store):
    with store.session() as s:
        a, b = add(s, "a"), add(s, "b")
        c1 = cycles.start_cycle(s, trigger="tokens").id
        out = ledger.record_cycle_credits(s, c1, {a: (900, 0), b: (2000, 0)},
                                          {a: 900, b: 900}, passes=2.0)
        assert out["bytes_new"] == 2900 and out["completed"] == [b]
    with store.session() as s:
        da, db = s.get(Document, a), s.get(Document, b)
        assert (da.status, da.trained_bytes, da.cycle_id) == ("learning", 900, c1)
        assert (db.status, db.trained_bytes) == ("trained", 2000)
        c2 = cycles.start_cycle(s, trigger="backlog").id
        out = ledger.record_cycle_credits(s, c2, {a: (900, 0), b: (0, 300)}, {a: 900}, 2.0)
        assert out == {"bytes_new": 900, "bytes_replay": 300, "documents": 2, "completed": [a]}
    with store.session() as s:
        assert s.get(Document, a).status == "trained"
        assert s.get(Document, b).trained_bytes == 2000            # replay is not a pass
        assert shares(s, a) == [(c1, 900, 0), (c2, 900, 0)]
        assert shares(s, b)[-1] == (c2, 0, 300)


def test_rolling_a_cycle_back_takes_its_share_out_of_the_ledger(store):
    with store.session() as s:
        a, b = add(s, "a"), add(s, "b")
        c1 = cycles.start_cycle(s, trigger="tokens").id
        ledger.record_cycle_credits(s, c1, {a: (500, 0)}, {a: 900, b: 900}, 2.0)
        cycles.finish_cycle(s, c1, status="completed")
        c2 = cycles.start_cycle(s, trigger="backlog").id
        ledger.record_cycle_credits(s, c2, {a: (1300, 0), b: (400, 0)}, {a: 900, b: 900}, 2.0)
        cycles.finish_cycle(s, c2, status="completed")
    with store.session() as s:
        done = cycles.roll_back_cycles_after(s, c1, "rolled back")
        assert done["cycles"] == [c2]
    with store.session() as s:
        da, db = s.get(Document, a), s.get(Document, b)
        assert (da.status, da.trained_bytes, da.cycle_id) == ("learning", 500, c1)
        assert (db.status, db.trained_bytes, db.cycle_id) == ("pending", 0, None)
        assert [c.cycle_id for c in s.scalars(select(CycleDocument))] == [c1]


def test_a_changed_budget_re_sorts_trained_and_learning(store):
    with store.session() as s:
        a, b = add(s, "a"), add(s, "b")
        c = cycles.start_cycle(s, trigger="tokens").id
        ledger.record_cycle_credits(s, c, {a: (1800, 0), b: (1000, 0)}, {a: 900, b: 900}, 2.0)
    with store.session() as s:
        assert ledger.apply_budget(s, 3.0) == {"learning_again": 1, "trained": 0}
    with store.session() as s:
        assert s.get(Document, a).status == "learning"
        assert ledger.apply_budget(s, 1.0) == {"learning_again": 0, "trained": 2}
    with store.session() as s:
        assert {s.get(Document, i).status for i in (a, b)} == {"trained"}


def test_the_backlog_goes_breadth_first_learning_first_then_shuffled(store):
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    with store.session() as s:
        old = add(s, "old", first_seen=t0)
        part = add(s, "part", status="learning", first_seen=t0)
        new2 = add(s, "new2", first_seen=t0 + dt.timedelta(hours=2))
        new1 = add(s, "new1", first_seen=t0 + dt.timedelta(hours=1))
        add(s, "done", status="trained", first_seen=t0)
        second = add(s, "second", status="learning", first_seen=t0)   # in its second pass
        d = s.get(Document, second)
        d.trainable_bytes, d.trained_bytes = 100, 150
    with store.session() as s:
        pending = sorted([old, new2, new1], key=ledger.shuffle_key)
        assert [e.id for e in ledger.backlog(s)] == [part, *pending, second]
        assert sorted(pending) != pending or len(set(map(ledger.shuffle_key, pending))) == 3
        assert [e.id for e in ledger.backlog(s, ids=[new1, new2])] == sorted(
            [new1, new2], key=ledger.shuffle_key)
        assert ledger.fresh_documents(s, after_id=part) == [new2, new1]
        assert ledger.document_horizon(s) == second
        summ = ledger.summary(s, passes=2.0, val_fraction=0.1)
        assert summ["documents"] == 5
        assert summ["bytes"] == sum(e.left_bytes(2.0, 0.1) for e in ledger.backlog(s))
        assert summ["sources"] == [{"source": "t", "documents": 5, "bytes": summ["bytes"],
                                    "trained": 1}]


def test_the_migration_to_the_ledger_makes_old_trained_rows_learning(store_target):
    """A store at revision 0002 with a trained row, upgraded: the row is learning with
    nothing counted (the old agent marked it trained whatever share it had seen)."""
    from sqlalchemy import text

    from store.db import create_store_engine, resolve_url
    from store.migrate import alembic_config

    from alembic import command

    url = resolve_url(store_target.data_dir, store_target.url)
    store_target.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_store_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
        conn.execute(text("INSERT INTO documents (uri, source, status, first_seen, updated) "
                          "VALUES ('file:///x', 'x', 'trained', :t, :t)"),
                     {"t": dt.datetime(2026, 1, 1)})
    engine.dispose()
    st = store_target.open()
    try:
        with st.session() as s:
            d = s.scalars(select(Document)).one()
            assert (d.status, d.trained_bytes, d.trainable_bytes) == ("learning", 0, None)
    finally:
        st.close()


def test_rolling_back_the_only_training_of_a_superseded_version_makes_it_untrained_again(store):
    """Issue 14 item 2: "superseded after training" must stay true when the cycle that
    trained it is rolled back: with nothing of it trained, it was superseded before training."""
    from store.documents import record_text

    with store.session() as s:
        one = record_text(s, uri="file:///f", source="t", text="one " * 50).document_id
        c1 = cycles.start_cycle(s, trigger="tokens").id
        ledger.record_cycle_credits(s, c1, {one: (100, 0)}, {one: 180}, 2.0)
        cycles.finish_cycle(s, c1, status="completed")
        two = record_text(s, uri="file:///f", source="t", text="two " * 50).document_id
        assert s.get(Document, one).reason == f"superseded by document {two} after training"
    with store.session() as s:
        cycles.roll_back_cycles_after(s, None, "rolled back")
    with store.session() as s:
        d = s.get(Document, one)
        assert (d.status, d.reason, d.trained_bytes, d.cycle_id) == (
            "skipped", f"superseded by document {two} before training", 0, None)
        assert s.get(Document, two).status == "pending"
