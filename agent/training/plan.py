"""What a cycle reads from the store: its documents in backlog order (the first ones loaded,
the rest loaded lazily), the replay sample of documents already learned, the held-out
slice of every source it is evaluated on, and, for a new model, the sample of the whole
backlog it learns its vocabulary from.

Each document's text is split into training text and held-out tail (learn.split_heldout);
a document with no training text left is listed as refused, for the trainer to record.
Everything here reads the store in short read-only sessions and writes nothing: which
backlog a cycle takes, and what it records, are agent/continuous_trainer.py's.
"""
from __future__ import annotations

import codecs
import hashlib
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from agent.settings import TrainerSettings
from agent.training.fim import doc_name
from agent.training.learn import PlanDoc, split_heldout
from store.documents import list_documents, replay_sample
from store.ledger import BacklogEntry, backlog, document_texts
from store.models import DocumentStatus

MORE_DOCS = 32                  # backlog documents loaded at a time once a cycle's plan runs out
# Held-out text evaluated per source after every cycle, at most HELDOUT_CHARS_PER_DOC of each
# document's tail: enough documents, spread over the source, that the consolidation rule
# reads a trend, not which documents the last cycle happened to read. (6,000 characters of a
# source's first documents swung 5% from cycle to cycle on CPython's stdlib while the model
# improved 1% a cycle on held-out files: the rule stopped it at 17 minutes, still improving.)
HELDOUT_CHARS_PER_SOURCE = 48_000
HELDOUT_CHARS_PER_DOC = 4_000
# A new model's vocabulary is learned from at most this much of its backlog's training text,
# held in memory while it is learned. The tokenizer benchmark learns the largest preset's
# 10,000 tokens from 12 MB in 1.7 s (docs/benchmarks.md): a little more than that gives
# every preset its whole vocabulary's worth of text in seconds; a larger backlog is
# sampled evenly rather than read whole.
VOCAB_SAMPLE_BYTES = 16 * 2 ** 20
VOCAB_MIN_SHARE = 4096          # bytes per document at least: a backlog of more documents than
#                                 the budget holds at this share is sampled by an even subset
VOCAB_LOAD_DOCS = 256           # documents read from the store at a time for that sample


class CyclePlan(NamedTuple):
    docs: list[PlanDoc]         # the documents the cycle starts with, texts loaded
    more: Optional[Callable[[], Optional[PlanDoc]]]   # the next one, loaded lazily; None: none
    refused: list[int]          # ids with no training text (the lazily loaded ones added later)
    tails: dict[int, str]       # held-out tails of `docs`
    # the whole backlog's sample a new model learns its vocabulary from (vocabulary_sample),
    # read only when called: learn() calls it for a model no step has trained
    vocab: Optional[Callable[[], list[PlanDoc]]] = None


def plan_documents(store, entries: Sequence[BacklogEntry], settings: TrainerSettings,
                   capacity: float, *, wrap: bool = False,
                   texts: Optional[dict[int, str]] = None) -> CyclePlan:
    """The documents of `entries` (backlog order) a cycle starts with: texts loaded for
    about 1.5 x `capacity` bytes still to learn (at least one document), the rest by
    `more()`. Each is read to its budget (settings.passes), round and round with `wrap`, or,
    an entry of a consolidation sweep, to its `target_bytes` (store.ledger.
    consolidation_order). `texts` (id: text) stands in for the store's when given
    (`cllm train`)."""
    st = settings

    passes = None if wrap else st.passes        # None: round and round

    first, rest, planned = [], list(entries), 0
    while rest and (planned < 1.5 * capacity or not first):
        e = rest.pop(0)
        first.append(e)
        planned += e.left_bytes(st.passes, st.val_fraction) or e.size_bytes
    refused: list[int] = []
    tails: dict[int, str] = {}

    def load(chunk) -> list[PlanDoc]:
        if texts is not None:
            got = {e.id: texts[e.id] for e in chunk if e.id in texts}
        else:
            with store.session(read_only=True) as s:
                got = document_texts(s, [e.id for e in chunk])
        out = []
        for e in chunk:
            head, tail = split_heldout(got.get(e.id, ""), st.val_fraction)
            if not head:
                refused.append(e.id)
                continue
            out.append(PlanDoc(e.id, e.source, head, e.trained_bytes, passes,
                               doc_name(e.uri),
                               budget_bytes=e.target_bytes))
            tails[e.id] = tail
        return out

    docs = load(first)
    first_tails = dict(tails)   # held-out tails of the documents the cycle starts with
    queue: list[PlanDoc] = []

    def more() -> Optional[PlanDoc]:
        while not queue and rest:
            chunk, rest[:] = rest[:MORE_DOCS], rest[MORE_DOCS:]
            queue.extend(load(chunk))
        return queue.pop(0) if queue else None

    def vocab() -> list[PlanDoc]:
        if texts is not None:               # `cllm train`: the documents it was given
            return vocabulary_sample(store, entries, st.val_fraction, texts=texts)
        with store.session(read_only=True) as s:    # the whole backlog, not just this scope
            whole = backlog(s)
        return vocabulary_sample(store, whole, st.val_fraction)

    return CyclePlan(docs, more if rest else None, refused, first_tails, vocab)


def vocabulary_sample(store, entries: Sequence[BacklogEntry], val_fraction: float, *,
                      texts: Optional[dict[int, str]] = None,
                      budget: int = VOCAB_SAMPLE_BYTES,
                      min_share: int = VOCAB_MIN_SHARE) -> list[PlanDoc]:
    """The text a new model learns its vocabulary from: the training head (held-out tail
    cut, as the cycles will train it) of every document of `entries` (`texts`, id: text,
    stands in for the store's when given), at most `budget` UTF-8 bytes in all, spread
    evenly: every document gives the same share, the start of its training head (one shorter
    than the share gives all of it and leaves the rest to the others). Past budget /
    min_share documents, an evenly spaced subset of them (by id: across the whole tree, not
    its first folders) takes the budget. In id order, each with its text cut to its share."""
    by_id = sorted(entries, key=lambda e: e.id)
    k = min(len(by_id), max(1, budget // max(1, min_share)))
    if k < len(by_id):
        by_id = [by_id[i] for i in np.linspace(0, len(by_id) - 1, k).round().astype(int)]
    share = _even_share([int(e.size_bytes * (1.0 - val_fraction)) for e in by_id], budget)
    out: list[PlanDoc] = []
    left = budget
    for i in range(0, len(by_id), VOCAB_LOAD_DOCS):
        chunk = by_id[i:i + VOCAB_LOAD_DOCS]
        if texts is not None:
            got = {e.id: texts[e.id] for e in chunk if e.id in texts}
        else:
            with store.session(read_only=True) as s:
                got = document_texts(s, [e.id for e in chunk])
        for e in chunk:
            head = _utf8_prefix(split_heldout(got.get(e.id, ""), val_fraction)[0],
                                min(share, left))
            if head:
                out.append(PlanDoc(e.id, e.source, head))
                left -= len(head.encode("utf-8", "surrogatepass"))
    return out


def _even_share(sizes: Sequence[int], budget: int) -> int:
    """The largest share s with sum(min(size, s)) <= budget: every document gives s bytes,
    a smaller one all it has (the whole budget when every document fits whole)."""
    left, n = budget, len(sizes)
    for i, size in enumerate(sorted(sizes)):
        even = left // (n - i)
        if size > even:
            return even
        left -= size
    return budget


def _utf8_prefix(text: str, n: int) -> str:
    """The longest start of `text` of at most n UTF-8 bytes (encoded as the tokenizer
    encodes, 'surrogatepass'; a character is never cut)."""
    if n <= 0:
        return ""
    data = text[:n].encode("utf-8", "surrogatepass")
    if len(data) <= n:
        return text[:n]
    return codecs.getincrementaldecoder("utf-8")("surrogatepass").decode(data[:n])


def sample_replay(store, settings: TrainerSettings, cycle_id: int,
                  exclude: set[int]) -> list[PlanDoc]:
    """A sample of trained documents for replay (their training text), seeded by the
    settings' seed and the cycle; none with replay_fraction 0."""
    if settings.replay_fraction <= 0:
        return []
    rng = np.random.default_rng(settings.seed * 1_000_003 + cycle_id)

    def draw(ids: list[int], k: int) -> list[int]:
        return rng.choice(ids, size=k, replace=False).tolist()

    vf = settings.val_fraction
    with store.session(read_only=True) as s:
        return [PlanDoc(d.id, d.source, split_heldout(d.text or "", vf)[0],
                        name=doc_name(d.uri))
                for d in replay_sample(s, settings.replay_docs, exclude_ids=sorted(exclude),
                                       draw=draw)]


def _spread(doc_id: int) -> bytes:
    """A document's place in the held-out order: a hash of its id (stable, spread)."""
    return hashlib.blake2b(int(doc_id).to_bytes(8, "little"), digest_size=8).digest()


def heldout_texts(store, val_fraction: float, new_tails: dict[str, list[str]]
                  ) -> dict[str, str]:
    """Held-out text per source: the tails (at most HELDOUT_CHARS_PER_DOC of each) of its
    documents already read, taken in a fixed pseudo-random order of their ids (spread over
    the source, not its first files), then of this cycle's (`new_tails`), up to
    HELDOUT_CHARS_PER_SOURCE. While the documents stay the same (consolidation) the slice
    stays the same from cycle to cycle."""
    vf = val_fraction
    budget: dict[str, float] = {}
    chosen: list[int] = []
    with store.session(read_only=True) as s:
        docs = [d for status in (DocumentStatus.TRAINED, DocumentStatus.LEARNING)
                for d in list_documents(s, status=status)]
        for d in sorted(docs, key=lambda d: _spread(d.id)):
            if budget.get(d.source, 0.0) < HELDOUT_CHARS_PER_SOURCE:
                budget[d.source] = budget.get(d.source, 0.0) + min(
                    (d.size_bytes or 0) * vf, HELDOUT_CHARS_PER_DOC)
                chosen.append(d.id)
        order = {i: k for k, i in enumerate(chosen)}
        texts: dict[str, list[str]] = {}
        for d in sorted(list_documents(s, ids=chosen, with_text=True), key=lambda d: order[d.id]):
            tail = split_heldout(d.text or "", vf)[1][:HELDOUT_CHARS_PER_DOC]
            texts.setdefault(d.source, []).append(tail)
    for source, items in new_tails.items():
        for t in items:
            if sum(map(len, texts.get(source, []))) < HELDOUT_CHARS_PER_SOURCE:
                texts.setdefault(source, []).append(t[:HELDOUT_CHARS_PER_DOC])
    return {src: "\n".join(parts) for src, parts in texts.items() if "".join(parts).strip()}
