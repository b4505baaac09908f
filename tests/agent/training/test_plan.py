"""The sample of the whole backlog a new model learns its vocabulary from
(plan.vocabulary_sample): training heads only, at most the byte budget, spread evenly over
the documents, an even subset of them past what the budget holds at the minimum share."""
import datetime as dt

import pytest

from agent.training.learn import split_heldout
from agent.training.plan import _utf8_prefix, vocabulary_sample
from store.ledger import BacklogEntry

VF = 0.1


def entries_and_texts(sizes, start_id=1):
    """Backlog entries (ids in order) with texts of those sizes (>= 100: the held-out tail
    holds the closing "#heldout"), each its own letter run."""
    texts, entries = {}, []
    for k, n in enumerate(sizes):
        i = start_id + k
        text = (f"doc{i} " + "abcdefghij"[k % 10] * 7 + " ") * (n // 13 + 1)
        texts[i] = text[:n - 8] + "#heldout"
        entries.append(BacklogEntry(i, "src", "pending", n, None, 0,
                                    dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)))
    return entries, texts


def test_a_backlog_within_the_budget_gives_every_training_head_whole():
    entries, texts = entries_and_texts([500, 3000, 100, 1200])
    got = vocabulary_sample(None, entries[::-1], VF, texts=texts, budget=10_000, min_share=100)
    assert [d.id for d in got] == [1, 2, 3, 4]                   # in id order
    for d in got:
        assert d.text == split_heldout(texts[d.id], VF)[0]
        assert "#heldout" in texts[d.id] and "#" not in d.text    # never the held-out tail


def test_a_larger_backlog_shares_the_budget_evenly():
    sizes = [200, 5000, 100, 9000, 7000]
    entries, texts = entries_and_texts(sizes)
    budget = 6000
    got = {d.id: d.text for d in vocabulary_sample(None, entries, VF, texts=texts,
                                                   budget=budget, min_share=100)}
    assert set(got) == {1, 2, 3, 4, 5}                            # every document gives some
    lengths = {i: len(t.encode()) for i, t in got.items()}
    assert sum(lengths.values()) <= budget
    assert lengths[1] == 180 and lengths[3] == 90                 # the small ones: all of it
    share = (budget - 180 - 90) // 3
    assert [lengths[i] for i in (2, 4, 5)] == [share] * 3         # the others: equal shares
    for i, t in got.items():
        assert split_heldout(texts[i], VF)[0].startswith(t)


def test_more_documents_than_the_budget_holds_are_sampled_evenly_by_id():
    entries, texts = entries_and_texts([1000] * 100)
    got = vocabulary_sample(None, entries, VF, texts=texts, budget=10 * 500, min_share=500)
    assert [d.id for d in got] == [1, 12, 23, 34, 45, 56, 67, 78, 89, 100]
    assert all(len(d.text.encode()) == 500 for d in got)


def test_documents_without_text_are_left_out():
    entries, texts = entries_and_texts([300, 300])
    del texts[1]
    assert [d.id for d in vocabulary_sample(None, entries, VF, texts=texts)] == [2]


@pytest.mark.parametrize("text", ["plain ascii", "naïve Straße", "東京 😀 x", "a\udc80b€"])
def test_a_prefix_in_bytes_never_cuts_a_character(text):
    size = len(text.encode("utf-8", "surrogatepass"))
    for n in range(size + 2):
        got = _utf8_prefix(text, n)
        assert text.startswith(got) and len(got.encode("utf-8", "surrogatepass")) <= n
        longer = text[:len(got) + 1]
        assert longer == got or len(longer.encode("utf-8", "surrogatepass")) > n


def test_a_planned_document_is_named_by_its_file_not_its_folders(store):
    """The name its file header gives it (agent/training/fim.py): from the store's uri,
    through the backlog, the last part of the path only."""
    from agent.settings import TrainerSettings
    from agent.training.plan import plan_documents
    from store.documents import add_document
    from store.ledger import backlog

    with store.session() as s:
        add_document(s, uri="file:///home/ada/work/pkg/spheres.py", source="src",
                     text="def f():\n    return 1\n" * 20)
        add_document(s, uri="https://docs.python.org/3/library/ast.html", source="web",
                     text="The ast module helps Python applications. " * 20)
    with store.session(read_only=True) as s:
        entries = backlog(s)
    plan = plan_documents(store, entries, TrainerSettings(), capacity=1e9)
    assert sorted(d.name for d in plan.docs) == ["ast.html", "spheres.py"]
