"""The lifecycle rules the store keeps for a changing source, and the crawl frontier, on
SQLite and PostgreSQL: record_text (added, unchanged, superseded, restored, duplicate with
its link), mark_deleted_under and its heirs, record_url's depth, queue_urls, queued_under,
url_handled and list_urls."""
from __future__ import annotations

import sqlalchemy as sa

from store.documents import (Outcome, is_duplicate, live_uris_under, mark_deleted_under,
                             record_refused, record_text, replay_sample)
from store.ledger import backlog, record_cycle_credits
from store.models import Document, FetchedUrl, UrlStatus
from store.cycles import start_cycle
from store.frontier import list_urls, queue_urls, queued_under, record_url, url_handled


def docs(s) -> list[tuple[str, str, int | None, str | None]]:
    """(uri, status, duplicate_of_id, reason) of every row, in id order."""
    return [(d.uri, d.status, d.duplicate_of_id, d.reason)
            for d in s.scalars(sa.select(Document).order_by(Document.id))]


# --------------------------------------------------------------------- record_text

def test_a_new_version_supersedes_the_pending_one_and_a_revert_restores_it(store):
    with store.session() as s:
        one = record_text(s, uri="file:///f", source="src", text="one")
        assert one.outcome == Outcome.ADDED
        assert record_text(s, uri="file:///f", source="src", text="one").outcome == Outcome.UNCHANGED
    with store.session() as s:
        two = record_text(s, uri="file:///f", source="src", text="two")
        assert two.outcome == Outcome.ADDED
        assert docs(s) == [("file:///f", "skipped", None, f"superseded by document {two.document_id} before training"),
                           ("file:///f", "pending", None, None)]
    with store.session() as s:
        back = record_text(s, uri="file:///f", source="src", text="one")
        assert (back.outcome, back.document_id, back.reason) == (Outcome.RESTORED, one.document_id, None)
        assert [d[1] for d in docs(s)] == ["pending", "skipped"]


def test_a_new_version_retires_a_trained_or_learning_one_as_superseded_after_training(store):
    """Issue 14 item 2: an old version that was (partly) trained is neither "skipped before
    training" nor live: deleted, naming its successor, its cycle kept, and never replayed."""
    with store.session() as s:
        cyc = start_cycle(s, trigger="test").id
        first = record_text(s, uri="file:///f", source="src", text="one")
        learning = record_text(s, uri="file:///g", source="src", text="gee one")
        record_cycle_credits(s, cyc, {first.document_id: (30, 0), learning.document_id: (5, 0)},
                             {first.document_id: 20, learning.document_id: 20}, passes=1.0)
        assert [d[1] for d in docs(s)] == ["trained", "learning"]
    with store.session() as s:
        two = record_text(s, uri="file:///f", source="src", text="two")
        gee = record_text(s, uri="file:///g", source="src", text="gee two")
        assert docs(s) == [
            ("file:///f", "deleted", None, f"superseded by document {two.document_id} after training"),
            ("file:///g", "deleted", None, f"superseded by document {gee.document_id} after training"),
            ("file:///f", "pending", None, None), ("file:///g", "pending", None, None)]
        assert s.get(Document, first.document_id).cycle_id == cyc       # history kept
        assert replay_sample(s, 10, seed=0) == []                        # never replayed
        assert sorted(e.id for e in backlog(s)) == sorted([two.document_id, gee.document_id])
    with store.session() as s:      # a revert brings the trained version back, not to relearn
        back = record_text(s, uri="file:///f", source="src", text="one")
        assert (back.outcome, back.document_id) == (Outcome.RESTORED, first.document_id)
        assert s.get(Document, first.document_id).status == "trained"
        assert s.get(Document, two.document_id).status == "skipped"     # never trained


def test_a_version_superseded_while_its_cycle_trains_is_recorded_as_superseded_after_training(store):
    """Issue 14 item 2: the cycle that was training a version when a newer one arrived
    commits its share; the row must not stay "superseded before training" with a cycle."""
    with store.session() as s:
        one = record_text(s, uri="file:///f", source="src", text="one")
        cyc = start_cycle(s, trigger="test").id            # the cycle reads "one"...
    with store.session() as s:                              # ...while "two" arrives
        two = record_text(s, uri="file:///f", source="src", text="two")
        assert s.get(Document, one.document_id).status == "skipped"
    with store.session() as s:                              # the cycle commits
        out = record_cycle_credits(s, cyc, {one.document_id: (30, 4)}, {one.document_id: 20},
                                   passes=1.0)
        assert out["completed"] == [] and out["bytes_new"] == 30
        old = s.get(Document, one.document_id)
        assert (old.status, old.reason, old.cycle_id, old.trained_bytes) == (
            "deleted", f"superseded by document {two.document_id} after training", cyc, 30)
        assert s.get(Document, two.document_id).status == "pending"
        assert replay_sample(s, 10, seed=0) == []
    with store.session() as s:      # replay alone of a superseded row changes nothing more
        cyc2 = start_cycle(s, trigger="test").id
        record_cycle_credits(s, cyc2, {one.document_id: (0, 8)}, {}, passes=1.0)
        old = s.get(Document, one.document_id)
        assert (old.status, old.cycle_id) == ("deleted", cyc)


def test_a_version_deleted_while_its_cycle_trains_stays_deleted(store):
    with store.session() as s:
        one = record_text(s, uri="file:///f", source="src", text="one")
        cyc = start_cycle(s, trigger="test").id
        mark_deleted_under(s, "file:///f")
        record_cycle_credits(s, cyc, {one.document_id: (30, 0)}, {one.document_id: 20}, passes=1.0)
        old = s.get(Document, one.document_id)
        assert (old.status, old.reason, old.cycle_id) == ("deleted", "removed from its source", cyc)


def test_a_superseded_version_names_the_duplicates_that_can_take_its_content_over(store):
    """The content of an old version may still live in a duplicate file: that file can take
    it over (as when the original is deleted), or the content is learned and replayed nowhere."""
    with store.session() as s:
        a = record_text(s, uri="file:///a", source="src", text="shared words")
        record_text(s, uri="file:///b", source="src", text="shared words")     # a duplicate
        record_text(s, uri="file:///c", source="src", text="other words")
        assert record_text(s, uri="file:///c", source="src", text="c changed").heirs == ()
        new = record_text(s, uri="file:///a", source="src", text="a has its own words now")
        assert new.heirs == ("file:///b",)
        back = record_text(s, uri="file:///b", source="src", text="shared words")
        assert (back.outcome, back.document_id) == (Outcome.RESTORED, a.document_id)
        row = s.get(Document, a.document_id)
        assert (row.uri, row.status, row.reason) == ("file:///b", "pending",
                                                     "content moved here from file:///a")


def test_content_live_elsewhere_is_a_duplicate_that_names_its_holder(store):
    with store.session() as s:
        a = record_text(s, uri="file:///a", source="src", text="shared words")
        b = record_text(s, uri="file:///b", source="src", text="shared words", size_bytes=12)
        assert b.outcome == Outcome.DUPLICATE and b.document_id != a.document_id
        assert b.reason == "duplicate content of file:///a" and b.sha256 == a.sha256
        dup = s.get(Document, b.document_id)
        assert (dup.status, dup.sha256, dup.duplicate_of_id, dup.size_bytes) == ("skipped", None, a.document_id, 12)
        assert is_duplicate(s, "file:///b") and not is_duplicate(s, "file:///a")
        # the same uri refused for another reason later is no duplicate any more
        record_refused(s, uri="file:///b", source="src", reason="binary content")
        assert s.get(Document, b.document_id).duplicate_of_id is None
        assert not is_duplicate(s, "file:///b")


def test_content_that_moved_is_restored_under_its_new_uri(store):
    with store.session() as s:
        a = record_text(s, uri="file:///old/a", source="src", text="moving words")
        mark_deleted_under(s, "file:///old")
        moved = record_text(s, uri="file:///new/a", source="new", text="moving words")
        assert (moved.outcome, moved.document_id) == (Outcome.RESTORED, a.document_id)
        assert moved.reason == "content moved here from file:///old/a"
        doc = s.get(Document, a.document_id)
        assert (doc.uri, doc.source, doc.status) == ("file:///new/a", "new", "pending")


# --------------------------------------------------------------- deletion and heirs

def test_deleting_a_folder_marks_its_rows_and_names_the_heirs_of_its_content(store):
    with store.session() as s:
        a = record_text(s, uri="file:///d/a", source="src", text="alpha words")
        record_text(s, uri="file:///d/sub/b", source="src", text="beta words")
        record_text(s, uri="file:///d2/c", source="src", text="gamma words")  # a sibling, not under d/
        record_refused(s, uri="file:///d/x.bin", source="src", reason="binary content")
        record_text(s, uri="file:///e/copy-of-a", source="src", text="alpha words")
        record_text(s, uri="file:///f/copy-of-b", source="src", text="beta words")
        record_text(s, uri="file:///e/other", source="src", text="other words")
        assert live_uris_under(s, "file:///d") == {"file:///d/a", "file:///d/sub/b", "file:///d/x.bin"}
    with store.session() as s:
        deleted = mark_deleted_under(s, "file:///d")
        assert deleted.n_rows == 3
        assert deleted.heirs == ["file:///e/copy-of-a", "file:///f/copy-of-b"]
        assert live_uris_under(s, "file:///d") == set()
        assert s.get(Document, a.document_id).status == "deleted"
        assert {d[0] for d in docs(s) if d[1] != "deleted"} == {
            "file:///d2/c", "file:///e/copy-of-a", "file:///f/copy-of-b", "file:///e/other"}
    with store.session() as s:  # the heir takes the content over: the deleted row comes back
        back = record_text(s, uri="file:///e/copy-of-a", source="src", text="alpha words")
        assert (back.outcome, back.document_id) == (Outcome.RESTORED, a.document_id)
        assert mark_deleted_under(s, "file:///nothing/here") == type(deleted)(0, [])


def test_deleting_one_file_names_only_its_own_duplicates(store):
    with store.session() as s:
        record_text(s, uri="file:///a", source="src", text="a words")
        record_text(s, uri="file:///ab", source="src", text="ab words")  # a prefix, not a child
        record_text(s, uri="file:///copy", source="src", text="ab words")
        deleted = mark_deleted_under(s, "file:///a")
        assert (deleted.n_rows, deleted.heirs) == (1, [])
        assert [d[1] for d in docs(s)] == ["deleted", "pending", "skipped"]


# ------------------------------------------------------------------------- frontier

def test_the_frontier_keeps_depth_per_origin(store):
    with store.session() as s:
        assert queue_urls(s, ["https://a.example/1", "https://a.example/2"], 1) == 2
        assert queue_urls(s, ["https://a.example/2", "https://a.example/3"], 2) == 1  # known: kept
        queue_urls(s, ["https://a.example.org/x", "https://b.example/y"], 1)  # other origins
        queue_urls(s, ["https://a.example/deep"], 5)
        record_url(s, "https://a.example/1", status=UrlStatus.FETCHED, http_status=200)
    with store.session(read_only=True) as s:
        assert queued_under(s, "https://a.example", max_depth=2) == [
            ("https://a.example/2", 1), ("https://a.example/3", 2)]
        assert queued_under(s, "https://a.example", max_depth=9)[-1] == ("https://a.example/deep", 5)
        assert queued_under(s, "https://a.example", max_depth=9, limit=1) == [("https://a.example/2", 1)]
        row = s.scalars(sa.select(FetchedUrl).where(FetchedUrl.url == "https://a.example/3")).one()
        assert (row.status, row.depth, row.reason) == ("queued", 2, "found at depth 2")
        fetched = s.scalars(sa.select(FetchedUrl).where(FetchedUrl.url == "https://a.example/1")).one()
        assert (fetched.status, fetched.depth) == ("fetched", 1)  # fetching it keeps its depth


def test_a_queued_row_without_a_depth_counts_as_max_depth(store):
    with store.session() as s:
        record_url(s, "https://a.example/old", status=UrlStatus.QUEUED, reason="from an old crawl")
    with store.session(read_only=True) as s:
        assert queued_under(s, "https://a.example", max_depth=3) == [("https://a.example/old", 3)]


def test_only_final_statuses_count_as_handled(store):
    with store.session() as s:
        for status in UrlStatus:
            record_url(s, f"https://a.example/{status}", status=status)
    with store.session(read_only=True) as s:
        handled = {str(st) for st in UrlStatus if url_handled(s, f"https://a.example/{st}")}
        assert handled == {"fetched", "duplicate", "skipped", "error"}
        assert not url_handled(s, "https://a.example/never-seen")
        assert [u.url for u in list_urls(s, status="queued")] == ["https://a.example/queued"]
        assert [u.status for u in list_urls(s, limit=2)] == ["queued", "fetched"]
        assert len(list_urls(s)) == len(UrlStatus)
